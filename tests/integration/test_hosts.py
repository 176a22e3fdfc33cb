"""Worker nodes on hosts of their own: network namespaces this test builds
(a veth pair each, addresses in a 10.x range that exists only inside this
machine), each host reaching PostgreSQL and Redis through forwarders on the
host side of its link (the services listen on loopback only). Then a node's
link is cut for longer than a lease while work runs everywhere: the other
nodes take its operations over, its late outcomes are refused (fenced by the
lease), and once the link is back it takes work again."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.db import connection

from operations import lifecycle
from operations.models import Operation
from tests.conftest import EMBEDDED, FAST_RECOVERY, wait_for

pytestmark = pytest.mark.workers

FAST = {**FAST_RECOVERY, "OPS_WORKER_MAX_SLOTS": "2"}


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


class Host:
    """A network namespace with one veth link to this machine, and forwarders
    to the database and the broker on the machine's side of the link."""

    def __init__(self, name: str, subnet: str) -> None:
        self.name = name  # the namespace, and the worker node's name
        self.outside, self.inside = f"{name}o", f"{name}i"  # interface names: at most 15 characters
        self.gateway, self.address = f"{subnet}.1", f"{subnet}.2"
        self.forwarders: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []

    @property
    def prefix(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.name)

    def build(self, ports: list[int]) -> None:
        self.ports = ports
        run("ip", "netns", "add", self.name)
        run("ip", "link", "add", self.outside, "type", "veth", "peer", "name", self.inside)
        run("ip", "link", "set", self.inside, "netns", self.name)
        run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.outside)
        run("ip", "link", "set", self.outside, "up")
        run(*self.prefix, "ip", "addr", "add", f"{self.address}/24", "dev", self.inside)
        run(*self.prefix, "ip", "link", "set", self.inside, "up")
        run(*self.prefix, "ip", "link", "set", "lo", "up")
        self.forwarders = [self._forwarder(port) for port in ports]

    def _forwarder(self, port: int) -> subprocess.Popen[bytes]:
        forwarder = subprocess.Popen(
            ["socat", f"TCP-LISTEN:{port},bind={self.gateway},fork,reuseaddr", f"TCP:127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its connections (forked children) go with it
        )
        wait_for(lambda: self._listening(port), timeout=10, message=f"the forwarder of port {port}")
        return forwarder

    def forward(self, port: int) -> None:
        """Forward a dropped port again."""
        self.forwarders[self.ports.index(port)] = self._forwarder(port)

    def _listening(self, port: int) -> bool:
        try:
            socket.create_connection((self.gateway, port), timeout=1).close()
        except OSError:
            return False
        return True

    def reaches(self, host: str, port: int) -> bool:
        """Whether a process on this host can open a TCP connection there."""
        probe = f"import socket; socket.create_connection(({host!r}, {port}), timeout=2)"
        done = subprocess.run([*self.prefix, sys.executable, "-c", probe], capture_output=True, timeout=30)
        return done.returncode == 0

    def drop(self, port: int) -> None:
        """Stop forwarding one port, open connections included: that service
        becomes unreachable from this host only."""
        forwarder = self.forwarders[self.ports.index(port)]
        os.killpg(forwarder.pid, signal.SIGKILL)
        forwarder.wait()

    def cut(self) -> None:
        run("ip", "link", "set", self.outside, "down")

    def mend(self) -> None:
        run("ip", "link", "set", self.outside, "up")

    def remove(self) -> None:
        for forwarder in self.forwarders:
            if forwarder.poll() is None:
                os.killpg(forwarder.pid, signal.SIGKILL)
                forwarder.wait()
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        subprocess.run(["ip", "link", "del", self.outside], capture_output=True)

    def url(self, url: str) -> str:
        """A loopback URL of this machine, as this host reaches it."""
        parts = urlsplit(url)
        netloc = parts.netloc.replace(parts.hostname or "", self.gateway, 1)
        return urlunsplit(parts._replace(netloc=netloc))


def _why_not() -> str | None:
    if EMBEDDED:
        return "hosts of their own need the scaled deployment (a database and a broker over TCP)"
    if os.geteuid() != 0:
        return "building network namespaces needs root"
    for tool in ("ip", "socat"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (iproute2, socat)"
    probe = f"opsprobe{random.randrange(1000)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@pytest.fixture
def hosts() -> Iterator[Callable[[int], list[Host]]]:
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    built: list[Host] = []
    tag = f"{random.randrange(16**3):03x}"
    subnet = f"10.{random.randrange(100, 250)}"
    database = connection.settings_dict
    ports = [int(database["PORT"] or 5432), urlsplit(os.environ["CELERY_BROKER_URL"]).port or 6379]

    def build(count: int) -> list[Host]:
        for _ in range(count):
            host = Host(f"ops{tag}n{len(built)}", f"{subnet}.{len(built)}")
            built.append(host)
            host.build(ports)
        return built[-count:]

    try:
        yield build
    finally:
        for host in built:
            host.remove()


def node_env(host: Host, **extra: str) -> dict[str, str]:
    database = connection.settings_dict
    database_url = f"postgres://{database['USER']}@127.0.0.1:{database['PORT'] or 5432}/{database['NAME']}"
    return {
        "DATABASE_URL": host.url(database_url),
        "CELERY_BROKER_URL": host.url(os.environ["CELERY_BROKER_URL"]),
        "OPS_NODE_NAME": host.name,
        **extra,
    }


def submit(log: Path, count: int, seconds: float) -> list[str]:
    return [
        str(
            lifecycle.operation_submit(
                bank_id="alpha", operation_type="test_sleep", payload={"seconds": seconds, "log": str(log)}
            ).operation.pk
        )
        for _ in range(count)
    ]


def takes_work_again(host: Host, log: Path, message: str) -> None:
    """New operations complete, and the host runs some of them."""
    more = submit(log, 12, 0.3)
    wait_for(lambda: statuses(more) == {"completed"}, timeout=90, message="the next operations")
    wait_for(
        lambda: any(
            r["worker"].endswith(f"@{host.name}") for r in runs(log) if r["op"] in more and r["event"] == "end"
        ),
        timeout=60,
        message=message,
    )


def statuses(ids: list[str]) -> set[str]:
    return set(Operation.objects.filter(pk__in=ids).values_list("status", flat=True))


def runs(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_worker_nodes_on_hosts_of_their_own(hosts: Any, start_workers: Any, alpha: Any, tmp_path: Path) -> None:
    a, b = hosts(2)
    database_port = int(connection.settings_dict["PORT"] or 5432)
    # On a host, loopback has no database: its link is the only way there.
    assert not a.reaches("127.0.0.1", database_port)
    assert a.reaches(a.gateway, database_port)
    for host in (a, b):
        start_workers(ready=2, prefix=host.prefix, **node_env(host, OPS_WORKER_MAX_SLOTS="2"))
    log = tmp_path / "runs.jsonl"
    ids = submit(log, 12, 0.3)
    wait_for(lambda: statuses(ids) == {"completed"}, timeout=90, message="every operation")
    workers = {r["worker"] for r in runs(log) if r["event"] == "end"}
    assert {w.split("@", 1)[1] for w in workers} == {a.name, b.name}, workers


def test_a_cut_node_is_taken_over_fenced_and_rejoins(
    hosts: Any, start_workers: Any, alpha: Any, tmp_path: Path
) -> None:
    a, b = hosts(2)
    # This machine's own node runs beat (the sweeper and its reaper) and takes work too.
    start_workers(ready=2, beat=True, **FAST, OPS_NODE_NAME="local")
    nodes = {host.name: start_workers(ready=2, prefix=host.prefix, **node_env(host, **FAST)) for host in (a, b)}
    log = tmp_path / "runs.jsonl"
    ids = submit(log, 18, 1.5)

    def running_on_a() -> list[str]:
        return [
            str(pk)
            for pk in Operation.objects.filter(
                pk__in=ids, status="processing", worker__endswith=f"@{a.name}"
            ).values_list("pk", flat=True)
        ]

    cut_off = wait_for(running_on_a, timeout=60, message="work running on the node to cut off")
    a.cut()
    try:
        # Longer than a lease: the reaper takes its operations back, others run them.
        wait_for(
            lambda: (
                not Operation.objects.filter(
                    pk__in=cut_off, status="processing", worker__endswith=f"@{a.name}"
                ).exists()
            ),
            timeout=60,
            message="the cut-off node's operations taken over",
        )
        # ... and finish them while it is still cut off: its late outcomes arrive after theirs.
        wait_for(lambda: statuses(cut_off) == {"completed"}, timeout=90, message="the taken-over operations completed")
    finally:
        a.mend()
    wait_for(lambda: statuses(ids) == {"completed"}, timeout=180, message="every operation to complete")
    for pk in cut_off:
        taken = Operation.objects.get(pk=pk)
        # Taken back by the reaper, and recorded once: by the node that held
        # the lease at the end, not by the one that was cut off.
        assert taken.retry_count >= 1 and "worker lost" in taken.error_history[0]["error"], taken.error_history
        assert taken.worker and not taken.worker.endswith(f"@{a.name}"), taken.worker
        assert not taken.result_metadata["worker"].endswith(f"@{a.name}"), taken.result_metadata
    wait_for(lambda: "'lease lost'" in nodes[a.name].output(), timeout=60, message="the late outcome refused")
    # Back on the network, the node takes work again.
    takes_work_again(a, log, "the node that was cut off to take work again")


def test_a_node_that_loses_the_broker_only_loses_nothing(
    hosts: Any, start_workers: Any, alpha: Any, tmp_path: Path
) -> None:
    a, b = hosts(2)
    start_workers(ready=2, beat=True, **FAST, OPS_NODE_NAME="local")
    nodes = {host.name: start_workers(ready=2, prefix=host.prefix, **node_env(host, **FAST)) for host in (a, b)}
    log = tmp_path / "runs.jsonl"
    ids = submit(log, 18, 1.0)
    wait_for(
        lambda: Operation.objects.filter(pk__in=ids, status="processing", worker__endswith=f"@{a.name}").exists(),
        timeout=60,
        message="work running on the node about to lose its broker",
    )
    broker = urlsplit(os.environ["CELERY_BROKER_URL"]).port or 6379
    a.drop(broker)  # the database stays reachable
    wait_for(lambda: statuses(ids) == {"completed"}, timeout=180, message="every operation to complete")
    assert "Connection to broker lost" in nodes[a.name].output()
    # Each ran to its end once: what the node was running it finished (its
    # database and leases never went away); the messages it held went back to
    # the broker, and a copy of a finished or running operation is dropped at the claim.
    ends = [r["op"] for r in runs(log) if r["event"] == "end"]
    assert sorted(ends) == sorted(ids)
    assert all(Operation.objects.get(pk=pk).result_metadata["slept"] == 1.0 for pk in ids)
    # The broker back, the node reconnects (its retries back off) and takes work again.
    connected = nodes[a.name].output().count("Connected to")
    a.forward(broker)
    wait_for(lambda: nodes[a.name].output().count("Connected to") > connected, timeout=90, message="the reconnection")
    takes_work_again(a, log, "the node that lost its broker to take work again")
