"""`make bench` (`python -m bench`): the figures of issue 11 on PostgreSQL and
Redis, each with its reference from the same run, then the embedded
comparison. Prints Markdown tables and writes bench/results/latest.json.

    make bench                          # the full run (11-14 minutes on 2 cores)
    make bench BENCH_ARGS=--quick       # a smoke run (about 3 minutes)
    make bench BENCH_ARGS=--task-events # embedded: Celery task events off / on / with Flower

Uses its own database (`ops_bench`, created when missing) and its own Redis
databases (9 for the platform, 10 for bare Celery), which it empties.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/ops_bench"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/9"
DEFAULT_REFERENCE_BROKER_URL = "redis://127.0.0.1:6379/10"
# The settings' strict check wants a secret with DATABASE_URL; this one signs
# nothing that outlives the run.
SECRET_KEY = "bench-only-secret-key-not-for-any-deployment-0123456789"


SCALED_FIGURES = ("noop", "idle", "pages", "pickup", "hindsight", "fairness")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer operations, one run each")
    parser.add_argument("--runs", type=int, help="runs of each throughput figure, median shown (default 3)")
    parser.add_argument("--operations", type=int, help="no-op operations per throughput run (default 5,000)")
    parser.add_argument("--slots", type=int, default=4, help="slots of the no-op node and bare Celery's concurrency")
    parser.add_argument("--skip-embedded", action="store_true", help="leave out the embedded comparison")
    parser.add_argument("--skip-scaled", action="store_true", help="only the embedded comparison")
    parser.add_argument("--no-peer", action="store_true", help="do not install or run Hindsight's own worker")
    parser.add_argument(
        "--only",
        action="append",
        choices=SCALED_FIGURES,
        metavar="FIGURE",
        help=f"measure only these scaled figures (repeatable; any of {', '.join(SCALED_FIGURES)}); "
        "implies --skip-embedded",
    )
    parser.add_argument(
        "--task-events",
        action="store_true",
        help="instead of everything else: the embedded platform with Celery task events off, on, and with Flower",
    )
    parser.add_argument(
        "--scale",
        action="store_true",
        help="instead of everything else: the scale section (1M and 10M operations; takes a while, in database ops_scale)",
    )
    parser.add_argument(
        "--scale-sizes",
        default="1000000,10000000",
        help="operations at each step of --scale, comma-separated (default 1000000,10000000)",
    )
    parser.add_argument(
        "--scale-reuse",
        action="store_true",
        help="with --scale: keep the rows an earlier run left in ops_scale and load only what each size lacks "
        "(a 100M-row table takes an hour to load)",
    )
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL))
    parser.add_argument("--broker-url", default=os.environ.get("BENCH_BROKER_URL", DEFAULT_BROKER_URL))
    parser.add_argument(
        "--reference-broker-url", default=os.environ.get("BENCH_REFERENCE_BROKER_URL", DEFAULT_REFERENCE_BROKER_URL)
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="results file (default bench/results/latest.json; with --task-events, task-events.json)",
    )
    args = parser.parse_args(argv)
    for name in ("broker_url", "reference_broker_url"):
        url = getattr(args, name)
        parsed = urlparse(url)
        if parsed.scheme != "redis" or parsed.path.strip("/") in ("", "0"):
            parser.error(
                f"--{name.replace('_', '-')} must be a numbered Redis database other than 0 "
                f"(the benchmark empties it): {url}"
            )
    if args.broker_url == args.reference_broker_url:
        parser.error("the platform and bare Celery need Redis databases of their own")
    if not urlparse(args.database_url).scheme.startswith("postgres"):
        parser.error("--database-url must be a PostgreSQL URL")
    if args.only:
        args.skip_embedded = True
    if args.scale_reuse and not args.scale:
        parser.error("--scale-reuse goes with --scale")
    if args.scale:
        args.database_url = urlparse(args.database_url)._replace(path="/ops_scale").geturl()
        try:
            args.scale_sizes = [int(float(size)) for size in args.scale_sizes.split(",")]
        except ValueError:
            parser.error(f"--scale-sizes must be numbers, comma-separated: {args.scale_sizes}")
    if args.output is None:
        # The task-events comparison keeps the full run's results beside it.
        name = "task-events.json" if args.task_events else "scale.json" if args.scale else "latest.json"
        args.output = BENCH_DIR / "results" / name
    return args


def ensure_database(url: str, *, fresh: bool = False) -> None:
    """Create the benchmark's database when it is missing (`fresh`: anew)."""
    import psycopg

    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    admin = parsed._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        if fresh:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{name}"')


def scaled_env(args: argparse.Namespace) -> dict[str, str]:
    """The environment of the driver and of every process it starts: the
    scaled deployment on the benchmark's database and broker, nothing
    inherited that would change the plan (OPS_*)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPS_")}
    env.update(
        DATABASE_URL=args.database_url,
        CELERY_BROKER_URL=args.broker_url,
        BENCH_REFERENCE_BROKER_URL=args.reference_broker_url,
        DJANGO_SECRET_KEY=SECRET_KEY,
        DJANGO_SETTINGS_MODULE="opsproject.settings",
        OPS_OPERATION_TYPE_MODULES="bench.optypes",
        OPS_LOG_LEVEL="WARNING",
        OPS_NODE_NAME="bench",
        PYTHONPATH=os.pathsep.join(p for p in (str(PROJECT_DIR), os.environ.get("PYTHONPATH", "")) if p),
    )
    return env


def versions() -> dict[str, str]:
    import celery
    import django
    import redis
    from django.db import connection

    from bench.bare import marks

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        (postgres,) = cursor.fetchone()
    return {
        "django": django.get_version(),
        "celery": celery.__version__,
        "postgresql": str(postgres),
        "redis": str(marks().info("server")["redis_version"]),
        "redis_py": redis.__version__,
    }


class Run:
    """Collects figures; a figure that fails is reported and the rest go on."""

    def __init__(self) -> None:
        from bench.report import Figure

        self.figures: list[Figure] = []
        self.notes: list[str] = []
        self.failed = False

    def say(self, message: str) -> None:
        print(message, flush=True)

    def measure(self, title: str, measure: Callable[[], Any]) -> None:
        from bench.report import Figure

        self.say(title)
        clock = time.perf_counter()
        try:
            result = measure()
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            self.failed = True
            traceback.print_exc()
            self.figures.append(Figure(key="error", label=title, platform=" ".join(f"failed: {exc}".split())[:200]))
            return
        figures = result if isinstance(result, list) else [result]
        self.figures.extend(figures)
        self.notes.extend(f.values["note"] for f in figures if "note" in f.values)
        self.say(f"  ({time.perf_counter() - clock:.0f}s)")


def scaled_section(args: argparse.Namespace, run: Run, env: dict[str, str]) -> None:
    from django.conf import settings

    from bench import peer, scaled
    from bench.procs import Processes
    from tenancy.api_keys import api_key_create, api_key_revoke

    options = scaled.QUICK if args.quick else scaled.Options()
    if args.runs:
        options = replace(options, runs=args.runs)
    if args.operations:
        options = replace(options, noop_operations=args.operations)
    scaled.reset_broker(args.broker_url)
    scaled.reset_broker(args.reference_broker_url)
    scaled.remove_earlier_runs()
    # Every figure runs against a table of a deployment's size (and its
    # statistics): on an empty one PostgreSQL plans the hot path as scans.
    run.say("history: finished operations the figures run beside")
    scaled.ensure_history(options.history_rows, options.history_banks, run.say)
    key_row, key = api_key_create(name="bench", admin=True)
    logs = BENCH_DIR / "results" / "logs"
    wanted = set(args.only or SCALED_FIGURES)
    try:
        with Processes(logs) as procs:
            # Figures 1-3: a node of `--slots` slots, nothing reserved, so its
            # shared worker has exactly bare Celery's concurrency.
            noop_env = {**env, "OPS_WORKER_MAX_SLOTS": str(args.slots), "OPS_WORKER_CONSOLIDATION_RESERVED_SLOTS": "0"}
            if wanted & {"noop", "idle"}:
                with scaled.node(procs, noop_env, "noop-node") as (_, node_pid):
                    bare_worker = scaled.start_bare_worker(procs, env, args.slots)
                    if "noop" in wanted:
                        run.measure(
                            "no-op throughput and submit rate, platform and bare Celery interleaved",
                            lambda: scaled.noop_throughput(options, args.slots, node_pid, bare_worker.pid, run.say),
                        )
                    if "idle" in wanted:
                        run.measure("one no-op on idle workers", lambda: scaled.idle_latency(options, run.say))
                    procs.stop(bare_worker)
            # Hindsight's own API and worker, alone on the machine like each side.
            reference: dict[str, Any]
            if "hindsight" not in wanted:
                reference = {"available": False, "reason": "not measured"}
            elif args.no_peer:
                reference = {"available": False, "reason": "skipped (--no-peer)"}
            else:
                run.say("Hindsight 1.1.0, the peer of the Hindsight workload")
                rng = random.Random(4)
                reference = peer.measure(options, procs, run.say, lambda n: scaled.note_text(rng, n))
            # The rest: the default slot plan and gunicorn, as deployed.
            with scaled.node(procs, env, "node") as (plan, _):
                url = scaled.start_web(procs, env, settings.OPS_WEB_WORKERS)
                run.notes.append(
                    f"default slot plan: {plan['max_slots']} slots, reserved {plan['reserved']}, "
                    f"shared {plan['shared']}; gunicorn with {settings.OPS_WEB_WORKERS} sync workers"
                )
                if "pages" in wanted:
                    run.measure("pages over a large table", lambda: scaled.pages(options, url, key, run.say))
                if "pickup" in wanted:
                    run.measure(
                        "pickup of a single-item async retain", lambda: scaled.pickup(options, url, key, run.say)
                    )
                if "hindsight" in wanted:
                    run.measure(
                        "Hindsight's workload", lambda: scaled.hindsight_workload(options, url, key, reference, run.say)
                    )
                if "fairness" in wanted:
                    run.measure(
                        "fairness across banks", lambda: scaled.fairness(options, url, key, plan["shared"], run.say)
                    )
    finally:
        api_key_revoke(key_id=key_row.pk)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    clock = time.perf_counter()
    sys.path.insert(0, str(PROJECT_DIR))
    from bench.procs import stop_on_sigterm

    stop_on_sigterm()
    env = scaled_env(args)
    ensure_database(args.database_url, fresh=args.scale and not args.scale_reuse)
    os.environ.update(env)
    for inherited in [k for k in os.environ if k.startswith("OPS_") and k not in env]:
        del os.environ[inherited]
    import django

    django.setup()
    from django.core.management import call_command

    from bench import embedded
    from bench.report import machine, machine_line, markdown_table, results_document, write_results

    call_command("migrate", verbosity=0)
    info = machine()
    info.update(versions())
    run = Run()
    run.say(f"make bench on {machine_line(info)}; PostgreSQL {info['postgresql']}, Redis {info['redis']}")
    embedded_result: dict[str, Any] | None = None
    quick = args.quick
    embedded_count, embedded_rounds = (500, 5) if quick else (2_000, 20)
    if args.scale:
        from bench import scale

        results, scale_table = scale.run(args.scale_sizes, run.say, reuse=args.scale_reuse)
        write_results(args.output, {"machine": info, "started_at": started_at, "scale": results})
        print(f"\n## Scale: the operations table at {', '.join(f'{s:,}' for s in args.scale_sizes)} rows\n")
        print(scale_table)
        print(f"\nWhole run: {(time.perf_counter() - clock) / 60:.1f} min. Results: {args.output}")
        return 0
    if args.task_events:
        embedded_count = args.operations or (500 if quick else 5_000)
        run.say(f"embedded: Celery task events off / on / with Flower, {embedded_count:,} no-ops, {args.slots} slots")
        embedded_result = embedded.task_events(embedded_count, args.slots, embedded_rounds, run.say)
    else:
        if not args.skip_scaled:
            scaled_section(args, run, env)
        if not args.skip_embedded:
            run.say(f"embedded comparison: {embedded_count:,} no-ops, {args.slots} slots, filesystem broker")
            try:
                embedded_result = embedded.comparison(embedded_count, args.slots, embedded_rounds, run.say)
            except Exception:
                run.failed = True
                traceback.print_exc()
    seconds = time.perf_counter() - clock
    document = results_document(
        figures=run.figures,
        machine_info=info,
        options={k: str(v) for k, v in vars(args).items()},
        started_at=started_at,
        seconds=seconds,
        embedded=embedded_result,
        notes=run.notes,
    )
    write_results(args.output, document)
    print()
    print(
        f"Machine: {machine_line(info)}; PostgreSQL {info['postgresql']}, Redis {info['redis']}, "
        f"Celery {info['celery']}, Django {info['django']}."
    )
    if run.figures:
        print(f"\n## Scaled (PostgreSQL + Redis){' — quick run' if quick else ''}\n")
        print(markdown_table(run.figures))
        print("\nRatios are platform / reference: above 1 is better for rates, worse for times.")
    for note in run.notes:
        print(f"\n{note}")
    if embedded_result is not None:
        print(
            f"\n## Embedded (SQLite + filesystem broker), {embedded_result['operations']:,} no-ops, "
            f"{embedded_result['slots']} slots\n"
        )
        print(embedded_result["table"])
    print(f"\nWhole run: {seconds / 60:.1f} min. Results: {args.output}")
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
