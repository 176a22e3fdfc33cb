"""The embedded broker: kombu's filesystem transport, made safe for several
processes.

kombu's own version writes a message file in place and a consumer may move it
away while it is still being written: the consumer reads an empty file, its
worker dies with a JSON error, and the message is gone (the sweeper re-publishes
it, but only after OPS_REDISPATCH_SECONDS). And it moves consumed files to the
system temporary folder, which may be another filesystem, so two consumers can
both copy one message.

Here a message is written under a hidden name and renamed into place, and a
consumer claims a file by renaming it into a folder beside the queue: both are
atomic on one filesystem, so a message is read whole, once.
"""

from __future__ import annotations

import os
import uuid
from queue import Empty
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]  # kombu's stubs
        name = f"{round(monotonic() * 1000):015d}_{uuid.uuid4()}.{queue}.msg"
        # A leading dot keeps consumers from matching the file until it is whole.
        partial = os.path.join(self.data_folder_out, f".{name}.part")
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.rename(partial, os.path.join(self.data_folder_out, name))
        except OSError as exc:
            raise ChannelError(f"cannot add {name!r} to the broker folder") from exc

    def _get(self, queue: str) -> Any:  # type: ignore[override]  # kombu's stubs
        wanted = f"{queue}.msg"
        for filename in sorted(os.listdir(self.data_folder_in)):
            if filename.startswith(".") or filename.partition(".")[2] != wanted:
                continue
            claimed = os.path.join(self.processed_folder, f"{os.getpid()}-{uuid.uuid4().hex}-{filename}")
            try:
                os.rename(os.path.join(self.data_folder_in, filename), claimed)
            except FileNotFoundError:
                continue  # another consumer took it first
            with open(claimed, "rb") as f:
                payload = f.read()
            if not self.store_processed:
                os.remove(claimed)
            return loads(bytes_to_str(payload))
        raise Empty()


class Transport(filesystem.Transport):
    Channel = Channel
    driver_type = "filesystem"
    driver_name = "filesystem"
