"""The client side of the HTTP workloads, shared by our side and the peer's."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def post_concurrently(
    base_url: str,
    path: str,
    bodies: Iterable[dict[str, object]],
    *,
    in_flight: int,
    headers: dict[str, str] | None = None,
) -> tuple[float, list[str]]:
    """POST every body to `path` from `in_flight` threads (one keep-alive
    client each), as that many callers waiting for their answers would.
    Returns the seconds until the last answer and the failures (non-200)."""
    queue = iter(bodies)
    lock = threading.Lock()
    errors: list[str] = []

    def caller() -> None:
        with httpx.Client(base_url=base_url, headers=headers or {}, timeout=120) as client:
            while True:
                with lock:
                    body = next(queue, None)
                if body is None:
                    return
                try:
                    response = client.post(path, json=body)
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                if response.status_code != 200:
                    errors.append(f"HTTP {response.status_code}: {response.text[:200]}")

    clock = time.perf_counter()
    threads = [threading.Thread(target=caller) for _ in range(in_flight)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - clock, errors
