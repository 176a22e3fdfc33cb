"""The Redis broker: kombu's Redis transport, with one publishing client per
channel.

kombu builds a new redis-py client object for every message it publishes
(`Channel.conn_or_acquire`), which was a quarter of a publish's CPU on a
worker topping up its window. The client is only a handle on the channel's
connection pool, so one per channel serves every publish the same way.
Used for `redis://` URLs (settings); a `rediss://` URL keeps kombu's own
transport, which is where its TLS handling is keyed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis


class Channel(redis.Channel):
    _publisher: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        if self._publisher is None:
            self._publisher = self._create_client()  # type: ignore[attr-defined]  # kombu's, not in its stubs
        yield self._publisher


class Transport(redis.Transport):
    Channel = Channel
