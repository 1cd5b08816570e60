"""`python -m service.cli dead-letters list|requeue|delete`: the admin API's dead-letter commands.

Same logic as /api/admin/failed-jobs (ops/dead_letters.py), run against REDIS_URL and
DATABASE_URL from the environment. requeue and delete go through every matching dead letter
(no per-call limit) and refuse to run without at least one filter.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click
import redis

from core.config import Settings
from core.contracts import InvalidField
from core.db.database import connect
from core.redis_urls import redis_client
from ops.dead_letters import DeadLetters, Filter, Outcome

REDIS_TIMEOUT_S = 5.0


def _filters(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed([
        click.option("--queue", "queues", multiple=True, metavar="Q",
                     help="queue name (repeatable); 'face-detection' means all ten priorities"),
        click.option("--vendor", metavar="V", help="only this vendor's jobs"),
        click.option("--code", metavar="C", help="only this error code, e.g. IMAGE_NOT_FOUND"),
        click.option("--job-id", "job_ids", multiple=True, metavar="ID", help="only these job ids (repeatable)"),
    ]):
        func = option(func)
    return func


def _parse(queues: tuple[str, ...], vendor: str | None, code: str | None, job_ids: tuple[str, ...]) -> Filter:
    try:
        return Filter.parse(queue=list(queues) or None, vendor=vendor, code=code, job_ids=list(job_ids) or None)
    except InvalidField as exc:
        option = exc.field.split("[")[0].replace("jobIds", "job-id")
        raise click.BadParameter(exc.message, param_hint=f"--{option}") from None


def _dead_letters() -> DeadLetters:
    settings = Settings.from_env()
    conn = redis_client(settings.redis_url, socket_timeout=REDIS_TIMEOUT_S,
                        socket_connect_timeout=REDIS_TIMEOUT_S)
    return DeadLetters(conn, connect(settings.database_url), settings)


def _run(work: Callable[[], Any]) -> Any:
    try:
        return work()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise click.ClickException(f"Redis (REDIS_URL) is unavailable: {exc}") from None
    except InvalidField as exc:
        raise click.UsageError(f"{exc.message} (--queue, --vendor, --code or --job-id)") from None


@click.group("dead-letters")
def dead_letters() -> None:
    """Failed jobs (RQ's failed registries): list, requeue or delete them in bulk."""


@dead_letters.command("list")
@_filters
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--offset", default=0, type=click.IntRange(0))
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line instead of a table")
def list_command(queues: tuple[str, ...], vendor: str | None, code: str | None, job_ids: tuple[str, ...],
                 limit: int, offset: int, as_json: bool) -> None:
    """List dead letters, newest failure last."""
    flt = _parse(queues, vendor, code, job_ids)
    dead = _dead_letters()
    jobs, more = _run(lambda: dead.list(flt, limit=limit, offset=offset))
    if as_json:
        for job in jobs:
            click.echo(json.dumps(job, separators=(",", ":")))
        return
    counts = _run(dead.counts)
    click.echo("failed per queue: " + (", ".join(f"{q}={n}" for q, n in counts.items() if n) or "none"))
    for job in jobs:
        owner = job["recordId"] or job["batchId"] or "-"
        click.echo(f"{job['id']}  {job['queue']}  vendor={job['vendor'] or '-'}  {job['code']}  "
                   f"{owner}  {job['failedAt'] or '-'}  {job['message'][:100]}")
    click.echo(f"{len(jobs)} shown" + (f"; more match: --offset {offset + len(jobs)}" if more else ""))


def _report(verb: str, outcome: Outcome) -> None:
    for skipped in outcome.skipped:
        click.echo(f"skipped {skipped['id']} ({skipped['reason']}): {skipped['message']}")
    click.echo(f"{verb} {len(outcome.done)}, skipped {len(outcome.skipped)}")


@dead_letters.command("requeue")
@_filters
def requeue_command(queues: tuple[str, ...], vendor: str | None, code: str | None,
                    job_ids: tuple[str, ...]) -> None:
    """Requeue matching dead letters; their records / batch items go back to queued / pending."""
    flt = _parse(queues, vendor, code, job_ids)
    dead = _dead_letters()
    outcome = _run(lambda: dead.requeue(flt))
    for job_id in outcome.done:
        click.echo(f"requeued {job_id}")
    _report("requeued", outcome)


@dead_letters.command("delete")
@_filters
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def delete_command(queues: tuple[str, ...], vendor: str | None, code: str | None, job_ids: tuple[str, ...],
                   yes: bool) -> None:
    """Delete matching dead letters (records and batch items stay failed)."""
    flt = _parse(queues, vendor, code, job_ids)
    if flt.empty:
        raise click.UsageError("give at least one of --queue, --vendor, --code or --job-id")
    if not yes:
        click.confirm(f"Delete every dead letter matching {flt}?", abort=True)
    dead = _dead_letters()
    outcome = _run(lambda: dead.delete(flt))
    _report("deleted", outcome)
