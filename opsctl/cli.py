"""The opsctl commands.

    opsctl operations list BANK [--status S] [--type T] [--limit N]
    opsctl operations get BANK ID
    opsctl operations watch BANK [--all]
    opsctl operations cancel BANK ID | --all-pending [--type T]
    opsctl operations retry BANK ID
    opsctl operations delete BANK ID
    opsctl retain BANK --files GLOB [--async]
    opsctl tasks | workers | banks list
    opsctl webhooks list BANK
    opsctl webhooks deliveries BANK WEBHOOK_ID [--limit N] [--cursor C]

Every read command takes --json (the API's JSON, unchanged, on stdout).
Exit status: 0 done, 1 the API refused or could not be reached (its message
on stderr), 2 a usage error.
"""

from __future__ import annotations

import glob
import ipaddress
import json
import os
import string
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
from rich.console import Console
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from opsctl import render
from opsctl.client import Api, ApiError

STATUSES = ("pending", "processing", "completed", "failed", "cancelled")
ACTIVE = ("pending", "processing")
TASK_STATUS_CODES = {"pending": "Q", "processing": "R", "completed": "D", "failed": "F", "cancelled": "C"}

console = Console()
errors = Console(stderr=True)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def local_key_file(url: str) -> str | None:
    """The key `make run` (runplatform) wrote, when `url` is this machine's and
    the file holds one: OPS_DATA_DIR's, else ./var's (the project's default)."""
    try:
        host = urlsplit(url).hostname or ""
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # not a URL, or its host is a name other than localhost
        return None
    if not local:
        return None
    try:
        key = (Path(os.environ.get("OPS_DATA_DIR") or "var") / "api-key").read_text().strip()
    except OSError:  # none there, or not ours to read
        return None
    return key if key.startswith("ops_") else None


def api_of(ctx: click.Context) -> Api:
    obj = ctx.find_root().obj
    if "api" not in obj:
        if not obj["api_key"]:
            local_key = local_key_file(obj["url"])
            if local_key is None:
                raise click.UsageError(
                    "no API key: set OPS_API_KEY or pass --api-key (`make run` writes its key to var/api-key, "
                    "which opsctl reads by itself when run from the project's directory)"
                )
            obj["api_key"] = local_key
        obj["api"] = Api(obj["url"], obj["api_key"], timeout=obj["timeout"])
        ctx.find_root().call_on_close(obj["api"].close)
    api: Api = obj["api"]
    return api


def split_values(values: tuple[str, ...]) -> list[str]:
    """Repeated options and comma-separated lists alike: -s failed,cancelled -s pending."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


json_option = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead of a table.")

# The short ids the admin and the dashboard show are the first 8 characters.
SHORTEST_PREFIX = 8


def operation_id_of(api: Api, bank: str, given: str) -> str:
    """The operation `given` names: a full id, or a prefix of one (at least 8
    characters, as the consoles show them) that starts exactly one of the
    bank's operation ids."""
    try:
        return str(uuid.UUID(given))
    except ValueError:
        pass
    digits = given.replace("-", "")
    if len(digits) < SHORTEST_PREFIX or digits.strip(string.hexdigits):
        raise click.BadParameter(
            f"{given!r} is neither an operation id nor its first {SHORTEST_PREFIX} or more characters",
            param_hint="OPERATION_ID",
        )
    found = api.operations(bank, id_prefix=given, limit=3)
    # Checked here too: a server without the filter would list the bank's newest.
    ids = [
        str(o["id"]) for o in found.get("operations") or [] if str(o["id"]).replace("-", "").startswith(digits.lower())
    ]
    if not ids:
        raise ApiError(f"no operation of bank {bank!r} has an id starting with {given!r}", status=404)
    if len(ids) > 1:
        raise ApiError(
            f"{given!r} starts {found.get('total')} operation ids of bank {bank!r} "
            f"({', '.join(ids[:2])}, …): give more of the id"
        )
    return ids[0]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--url",
    envvar="OPS_URL",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="The platform's service root [env: OPS_URL].",
)
@click.option(
    "--api-key",
    envvar="OPS_API_KEY",
    default=None,
    help="An API key [env: OPS_API_KEY]; against this machine, var/api-key (as `make run` writes it) when unset.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds to wait for each API answer.",
)
@click.pass_context
def cli(ctx: click.Context, url: str, api_key: str | None, timeout: float) -> None:
    """Operate the operations platform from the command line.

    The options below may also follow the subcommand. An operation is named
    by its id or by its first 8 or more characters, as the consoles show it."""
    ctx.obj = {"url": url, "api_key": api_key, "timeout": timeout}


# --- operations -----------------------------------------------------------------------


@cli.group()
def operations() -> None:
    """A bank's operations: list, get, watch, cancel, retry, delete."""


@operations.command("list")
@click.argument("bank")
@click.option("--status", "-s", "statuses", multiple=True, help="Only this status (repeatable, or a,b).")
@click.option("--type", "-t", "types", multiple=True, help="Only this operation type (repeatable, or a,b).")
@click.option("--tag", default=None, help="Only operations with this tag.")
@click.option("--limit", "-n", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@json_option
@click.pass_context
def list_operations(
    ctx: click.Context,
    bank: str,
    statuses: tuple[str, ...],
    types: tuple[str, ...],
    tag: str | None,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """List a bank's operations, newest first."""
    wanted = split_values(statuses)
    for status in wanted:
        if status not in STATUSES:
            raise click.BadParameter(f"{status!r} is not one of {', '.join(STATUSES)}", param_hint="--status")
    data = api_of(ctx).operations(bank, status=wanted, type=split_values(types), tag=tag, limit=limit, offset=offset)
    if as_json:
        emit_json(data)
        return
    ops = data.get("operations") or []
    console.print(render.operations_table(ops, title=f"bank {bank}"))
    total = data.get("total")
    # Past the server's count cap the total is the database's estimate.
    shown = f"about {total:,}" if data.get("total_is_estimate") and isinstance(total, int) else total
    console.print(f"[dim]{offset + 1 if ops else 0}–{offset + len(ops)} of {shown}[/dim]")


@operations.command("get")
@click.argument("bank")
@click.argument("operation_id")
@click.option("--payload", is_flag=True, help="Include the operation's task payload.")
@json_option
@click.pass_context
def get_operation(ctx: click.Context, bank: str, operation_id: str, payload: bool, as_json: bool) -> None:
    """Show one operation, its result, errors and children."""
    api = api_of(ctx)
    data = api.operation(bank, operation_id_of(api, bank, operation_id), include_payload=payload)
    if as_json:
        emit_json(data)
        return
    console.print(render.operation_panel({"bank_id": bank, **data}))


@operations.command("watch")
@click.argument("bank")
@click.option("--all", "show_all", is_flag=True, help="Show finished operations too, not only pending and running.")
@click.option(
    "--interval", type=click.FloatRange(min=0.2), default=1.0, show_default=True, help="Seconds between refreshes."
)
@click.option("--limit", "-n", type=click.IntRange(1, 100), default=30, show_default=True)
@json_option
@click.pass_context
def watch_operations(ctx: click.Context, bank: str, show_all: bool, interval: float, limit: int, as_json: bool) -> None:
    """A live table of the bank's operations; ends when nothing is pending or running.

    With --json, one JSON object per refresh (one line each)."""
    api = api_of(ctx)

    def poll() -> tuple[dict[str, Any], dict[str, Any]]:
        listed = api.operations(bank, status=[] if show_all else list(ACTIVE), limit=limit)
        return listed, api.operation_stats(bank)

    def active(stats: dict[str, Any]) -> int:
        by_status = stats.get("by_status") or {}
        return int(by_status.get("pending", 0)) + int(by_status.get("processing", 0))

    def view(listed: dict[str, Any], stats: dict[str, Any]) -> Any:
        by_status = stats.get("by_status") or {}
        counts = ", ".join(f"{by_status.get(s, 0)} {s}" for s in STATUSES)
        title = f"bank {bank}: {counts}"
        return render.operations_table(listed.get("operations") or [], title=title)

    listed, stats = poll()
    if as_json:
        while True:
            click.echo(json.dumps({"operations": listed.get("operations"), "stats": stats}, sort_keys=True))
            if not active(stats):
                return
            time.sleep(interval)
            listed, stats = poll()
    if not console.is_terminal:
        # Into a file or a pipe: a line per refresh, and one per operation that changed.
        seen: dict[str, tuple[Any, ...]] = {}
        while True:
            stamp = datetime.now().strftime("%H:%M:%S")
            by_status = stats.get("by_status") or {}
            click.echo(f"{stamp} bank {bank}: " + ", ".join(f"{by_status.get(s, 0)} {s}" for s in STATUSES))
            for op in reversed(listed.get("operations") or []):
                progress = op.get("progress") if isinstance(op.get("progress"), dict) else {}
                state = (op.get("status"), progress.get("processed"), progress.get("total"))
                if seen.get(str(op.get("id"))) != state:
                    seen[str(op.get("id"))] = state
                    done = f" {state[1]}/{state[2]}" if state[2] else ""
                    click.echo(f"{stamp}   {op.get('id')} {op.get('operation_type')} {state[0]}{done}")
            if not active(stats):
                break
            time.sleep(interval)
            listed, stats = poll()
        click.echo(f"nothing pending or running in bank {bank}")
        return
    with Live(view(listed, stats), console=console, auto_refresh=False) as live:
        while active(stats):
            time.sleep(interval)
            listed, stats = poll()
            live.update(view(listed, stats), refresh=True)
    console.print(f"[green]nothing pending or running in bank {bank}[/green]")


@operations.command("cancel")
@click.argument("bank")
@click.argument("operation_id", required=False)
@click.option("--all-pending", is_flag=True, help="Cancel every pending operation of the bank.")
@click.option("--type", "operation_type", default=None, help="With --all-pending: only this type.")
@json_option
@click.pass_context
def cancel_operation(
    ctx: click.Context,
    bank: str,
    operation_id: str | None,
    all_pending: bool,
    operation_type: str | None,
    as_json: bool,
) -> None:
    """Cancel one operation (a running one stops at its next checkpoint), or every pending one."""
    if bool(operation_id) == all_pending:
        raise click.UsageError("give an operation id or --all-pending (one of them)")
    if operation_type and not all_pending:
        raise click.UsageError("--type goes with --all-pending")
    api = api_of(ctx)
    if all_pending:
        data = api.cancel_pending(bank, operation_type)
        if as_json:
            emit_json(data)
        else:
            console.print(f"cancelled {data.get('cancelled_count', 0)} pending operation(s) in bank {bank}")
        return
    assert operation_id is not None
    operation_id = operation_id_of(api, bank, operation_id)
    status, data = api.cancel(bank, operation_id)
    if as_json:
        emit_json(data)
    elif status == 202:
        console.print(f"cancel requested: {operation_id} stops at its next checkpoint")
    else:
        console.print(f"cancelled {operation_id}")


@operations.command("retry")
@click.argument("bank")
@click.argument("operation_id")
@json_option
@click.pass_context
def retry_operation(ctx: click.Context, bank: str, operation_id: str, as_json: bool) -> None:
    """Queue a failed or cancelled operation again."""
    api = api_of(ctx)
    operation_id = operation_id_of(api, bank, operation_id)
    data = api.retry(bank, operation_id)
    if as_json:
        emit_json(data)
    else:
        console.print(f"queued {operation_id} again (now {data.get('status')})")


@operations.command("delete")
@click.argument("bank")
@click.argument("operation_id")
@json_option
@click.pass_context
def delete_operation(ctx: click.Context, bank: str, operation_id: str, as_json: bool) -> None:
    """Delete a finished operation."""
    api = api_of(ctx)
    operation_id = operation_id_of(api, bank, operation_id)
    data = api.delete(bank, operation_id)
    if as_json:
        emit_json(data)
    else:
        console.print(f"deleted {operation_id}")


# --- retain ---------------------------------------------------------------------------


def expand(patterns: tuple[str, ...]) -> list[Path]:
    paths: list[Path] = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern, recursive=True))
        if not matched:
            raise click.BadParameter(f"no file matches {pattern!r}", param_hint="--files")
        paths.extend(Path(p) for p in matched if Path(p).is_file())
    if not paths:
        raise click.BadParameter("the patterns match folders only", param_hint="--files")
    return list(dict.fromkeys(paths))


@cli.command()
@click.argument("bank")
@click.option(
    "--files",
    "-f",
    "patterns",
    multiple=True,
    required=True,
    help="A file or glob (quote it: 'docs/**/*.md'); repeatable.",
)
@click.option("--async", "is_async", is_flag=True, help="Return once uploaded; do not wait for the conversions.")
@click.option("--tag", default=None, help="A tag for the operations (filterable).")
@click.option("--context", default=None, help="Context stored with the retained memories.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=0.5,
    show_default=True,
    help="Seconds between status checks while waiting.",
)
@json_option
@click.pass_context
def retain(
    ctx: click.Context,
    bank: str,
    patterns: tuple[str, ...],
    is_async: bool,
    tag: str | None,
    context: str | None,
    interval: float,
    as_json: bool,
) -> None:
    """Upload files to a bank: each becomes a file_convert_retain operation.

    Without --async, waits until every operation has finished (exit 1 if any failed)."""
    paths = expand(patterns)
    api = api_of(ctx)
    total = sum(p.stat().st_size for p in paths)
    operation_ids: list[str] = []
    progress_console = errors if as_json else console
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=progress_console,
        transient=as_json,
    ) as progress:
        upload = progress.add_task(f"uploading {len(paths)} file(s)", total=total)
        for path in paths:
            data = api.upload(bank, path, {"tag": tag or "", "context": context or ""})
            operation_ids.extend(data.get("operation_ids") or [])
            progress.advance(upload, path.stat().st_size)
    outcome: dict[str, Any] = {"bank_id": bank, "operation_ids": operation_ids, "files": [str(p) for p in paths]}
    if not is_async:
        outcome["operations"] = wait_for_operations(api, bank, operation_ids, interval, progress_console, as_json)
    if as_json:
        emit_json(outcome)
    elif is_async:
        for operation_id in operation_ids:
            console.print(f"queued {operation_id}")
    if not is_async and any(o.get("status") != "completed" for o in outcome["operations"]):
        failed = [o for o in outcome["operations"] if o.get("status") != "completed"]
        reasons = "; ".join(
            f"{o.get('operation_id')}: {o.get('status')} {o.get('error_message') or ''}".strip() for o in failed
        )
        raise ApiError(f"{len(failed)} of {len(operation_ids)} operation(s) did not complete: {reasons}")


def wait_for_operations(
    api: Api, bank: str, ids: list[str], interval: float, out: Console, quiet: bool
) -> list[dict[str, Any]]:
    finished: dict[str, dict[str, Any]] = {}
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        console=out,
        transient=quiet,
    ) as progress:
        task = progress.add_task("converting and retaining", total=len(ids))
        while len(finished) < len(ids):
            for operation_id in ids:
                if operation_id in finished:
                    continue
                data = api.operation(bank, operation_id)
                if data.get("status") in ("completed", "failed", "cancelled"):
                    finished[operation_id] = data
                    progress.advance(task)
            if len(finished) < len(ids):
                time.sleep(interval)
    results = [finished[i] for i in ids]
    if not quiet:
        console.print(render.operations_table(results))
    return results


# --- across banks -------------------------------------------------------------------


@cli.command()
@click.option("--type", "-t", "types", multiple=True, help="Only this task type (repeatable, or a,b).")
@click.option(
    "--status",
    "-s",
    "statuses",
    multiple=True,
    help="Q pending, R processing, D completed, F failed, C cancelled (or the names; repeatable).",
)
@click.option(
    "--within-hours", type=click.IntRange(min=1), default=None, help="Created in the last N hours (API default 1)."
)
@click.option("--tag", default=None)
@click.option("--limit", "-n", type=click.IntRange(1, 100), default=None)
@click.option("--offset", type=click.IntRange(min=0), default=None)
@json_option
@click.pass_context
def tasks(
    ctx: click.Context,
    types: tuple[str, ...],
    statuses: tuple[str, ...],
    within_hours: int | None,
    tag: str | None,
    limit: int | None,
    offset: int | None,
    as_json: bool,
) -> None:
    """The unified task view (GET /tasks) across the banks the key reaches."""
    codes = []
    for value in split_values(statuses):
        code = TASK_STATUS_CODES.get(value.lower(), value.upper())
        if code not in TASK_STATUS_CODES.values():
            raise click.BadParameter(f"{value!r} is not a status code (Q R D F C) or name", param_hint="--status")
        codes.append(code)
    data = api_of(ctx).tasks(
        task_type=split_values(types), status=codes, within_hours=within_hours, tag=tag, limit=limit, offset=offset
    )
    if as_json:
        emit_json(data)
        return
    console.print(render.tasks_table(data))


@cli.command()
@json_option
@click.pass_context
def workers(ctx: click.Context, as_json: bool) -> None:
    """The slot plan and the live worker nodes with what they run (admin key)."""
    data = api_of(ctx).workers()
    if as_json:
        emit_json(data)
        return
    console.print(render.workers_view(data))


@cli.group()
def banks() -> None:
    """Memory banks."""


@banks.command("list")
@click.option("--limit", "-n", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@json_option
@click.pass_context
def list_banks(ctx: click.Context, limit: int, offset: int, as_json: bool) -> None:
    """The banks this key reaches."""
    data = api_of(ctx).banks(limit=limit, offset=offset)
    if as_json:
        emit_json(data)
        return
    console.print(render.banks_table(data.get("banks") or []))
    console.print(f"[dim]{len(data.get('banks') or [])} of {data.get('total')}[/dim]")


@cli.group()
def webhooks() -> None:
    """A bank's webhooks and their delivery log."""


@webhooks.command("list")
@click.argument("bank")
@json_option
@click.pass_context
def list_webhooks(ctx: click.Context, bank: str, as_json: bool) -> None:
    """A bank's webhooks, oldest first (their secrets are never shown)."""
    data = api_of(ctx).webhooks(bank)
    if as_json:
        emit_json(data)
        return
    console.print(render.webhooks_table(data.get("items") or []))
    console.print(f"[dim]{len(data.get('items') or [])} of {data.get('total')}[/dim]")


@webhooks.command("deliveries")
@click.argument("bank")
@click.argument("webhook_id")
@click.option("--limit", "-n", type=click.IntRange(1, 200), default=20, show_default=True)
@click.option("--cursor", default=None, help="The next_cursor a previous page printed.")
@json_option
@click.pass_context
def list_deliveries(
    ctx: click.Context, bank: str, webhook_id: str, limit: int, cursor: str | None, as_json: bool
) -> None:
    """A webhook's delivery attempts, newest first."""
    data = api_of(ctx).webhook_deliveries(bank, webhook_id, limit=limit, cursor=cursor)
    if as_json:
        emit_json(data)
        return
    console.print(render.deliveries_table(data.get("items") or []))
    if data.get("next_cursor"):
        console.print(f"[dim]older: --cursor '{data['next_cursor']}'[/dim]")


def _global_option(name: str, key: str, **kwargs: Any) -> click.Option:
    """The root's option, accepted after a subcommand too (hidden there)."""

    def store(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is not None:
            ctx.find_root().obj[key] = value

    return click.Option([name], default=None, expose_value=False, hidden=True, callback=store, **kwargs)


def _accept_global_options_anywhere(group: click.Group) -> None:
    """`opsctl operations list BANK --api-key K` works as `opsctl --api-key K operations list BANK`."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            _accept_global_options_anywhere(command)
        else:
            command.params += [
                _global_option("--url", "url"),
                _global_option("--api-key", "api_key"),
                _global_option("--timeout", "timeout", type=click.FloatRange(min=0.1)),
            ]


_accept_global_options_anywhere(cli)


def main() -> None:
    cli(prog_name="opsctl")


if __name__ == "__main__":  # pragma: no cover
    main()
