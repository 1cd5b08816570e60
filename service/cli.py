"""Operator CLI: `python -m service.cli --help`.

  migrate                       create or upgrade the database schema (idempotent)
  vendor create ID [--name N]   create a vendor and print its first API key, once
  vendor add-key ID             print a new additional key for a vendor
  vendor revoke-keys ID         revoke every key of a vendor
  vendor set-limits ID [--image-processing L] [--background-removal L] [--bulk L] [--reads L] [--clear]
                                override a vendor's rate limits (L: "200/15 minutes"; "default" drops one)
  vendor show-limits ID         print a vendor's effective rate limits
  vendor webhook-secret ID      give a vendor a new webhook signing secret and print it, once
  demo-key PATH                 ensure vendor 'demo' exists, give it a new key, write it to PATH
  dead-letters list|requeue|delete [--queue Q] [--vendor V] [--code C] [--job-id ID ...]
                                failed jobs, listed or requeued/deleted in bulk
  reconcile [--older-than S] [--dry-run]
                                queue again what the database says is unfinished but Redis lost
  cleanup [--older-than-days D] [--dry-run] [--every S]
                                delete finished records, batches and local outputs past the retention
"""
from __future__ import annotations

from pathlib import Path

import click

from core.config import SettingError, Settings
from core.contracts import ID_PATTERN
from core.db.database import Database, connect
from service import limits as rate_limits
from service.admin.dead_letters_cli import dead_letters
from service.auth import create_api_key
from service.webhooks import create_webhook_secret


def _db() -> Database:
    return connect(Settings.from_env().database_url)


def _vendor_id(value: str) -> str:
    if not ID_PATTERN.match(value):
        raise click.BadParameter("must be 1-128 characters of letters, digits and . _ : @ -")
    return value


@click.group()
def cli() -> None:
    """image-queue operator commands (settings come from the environment; see README)."""


@cli.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    db = _db()
    db.migrate()
    click.echo("schema is up to date")


@cli.group()
def vendor() -> None:
    """Manage vendors and their API keys."""


@vendor.command("create")
@click.argument("vendor_id")
@click.option("--name", default=None, help="display name (defaults to the id)")
def vendor_create(vendor_id: str, name: str | None) -> None:
    """Create a vendor and print its API key (shown only this once)."""
    vendor_id = _vendor_id(vendor_id)
    db = _db()
    try:
        db.create_vendor(vendor_id, name or vendor_id)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    key = create_api_key(db, vendor_id)
    secret = create_webhook_secret(db, vendor_id)
    # stdout stays the key alone (scripts read it); the secret goes with the other messages.
    click.echo(f"vendor {vendor_id} created; webhook signing secret (X-ImageQueue-Signature; store it now, "
               f"it is not shown again): {secret}", err=True)
    click.echo("API key (store it now, it is not shown again):", err=True)
    click.echo(key)


@vendor.command("add-key")
@click.argument("vendor_id")
def vendor_add_key(vendor_id: str) -> None:
    """Print a new API key for an existing vendor."""
    db = _db()
    if db.get_vendor(vendor_id) is None:
        raise click.ClickException(f"no vendor {vendor_id!r}; create it with 'vendor create'")
    click.echo(create_api_key(db, vendor_id))


@vendor.command("revoke-keys")
@click.argument("vendor_id")
def vendor_revoke_keys(vendor_id: str) -> None:
    """Revoke every API key of a vendor."""
    count = _db().revoke_api_keys(vendor_id)
    click.echo(f"revoked {count} key(s) of {vendor_id}")


def _echo_limits(vendor_id: str, overrides: dict[str, str]) -> None:
    click.echo(f"rate limits of vendor {vendor_id}:")
    for category, (limit, source) in rate_limits.effective_limits(Settings.from_env(), overrides).items():
        click.echo(f"  {category:<20} {limit:<24} ({source})")


@vendor.command("set-limits")
@click.argument("vendor_id")
@click.option("--image-processing", metavar="LIMIT", help="every queueing POST (RATE_LIMIT_IMAGE_PROCESSING)")
@click.option("--background-removal", metavar="LIMIT", help="remove-bg routes (RATE_LIMIT_BACKGROUND_REMOVAL)")
@click.option("--bulk", metavar="LIMIT", help="bulk-* and batch uploads (RATE_LIMIT_BULK)")
@click.option("--reads", metavar="LIMIT", help="status and stats reads (RATE_LIMIT_READS)")
@click.option("--clear", is_flag=True, help="drop every override first: back to the defaults")
def vendor_set_limits(vendor_id: str, image_processing: str | None, background_removal: str | None,
                      bulk: str | None, reads: str | None, clear: bool) -> None:
    """Override a vendor's rate limits, e.g. --bulk "20/hour"; the value "default" drops one.

    Running API processes apply the change within RATE_LIMIT_OVERRIDE_CACHE_S, without a restart.
    """
    given = {rate_limits.IMAGE_PROCESSING: image_processing, rate_limits.BACKGROUND_REMOVAL: background_removal,
             rate_limits.BULK: bulk, rate_limits.READS: reads}
    changes: dict[str, str | None] = {}
    for category, value in given.items():
        if value is not None:
            try:
                changes[category] = rate_limits.parse_override(value)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint=f"--{category}") from None
    if not changes and not clear:
        raise click.UsageError("nothing to change: give --image-processing, --background-removal, --bulk, "
                               "--reads or --clear")
    try:
        overrides = _db().set_vendor_limits(vendor_id, changes, replace=clear)
    except KeyError:
        raise click.ClickException(f"no vendor {vendor_id!r}; create it with 'vendor create'") from None
    _echo_limits(vendor_id, overrides)


@vendor.command("show-limits")
@click.argument("vendor_id")
def vendor_show_limits(vendor_id: str) -> None:
    """Print a vendor's effective rate limits, each marked default or override."""
    overrides = _db().get_vendor_limits(vendor_id)
    if overrides is None:
        raise click.ClickException(f"no vendor {vendor_id!r}; create it with 'vendor create'")
    _echo_limits(vendor_id, rate_limits.valid_overrides(vendor_id, overrides))


@vendor.command("webhook-secret")
@click.argument("vendor_id")
def vendor_webhook_secret(vendor_id: str) -> None:
    """Give a vendor a new webhook signing secret (the old one stops working) and print it."""
    db = _db()
    if db.get_vendor(vendor_id) is None:
        raise click.ClickException(f"no vendor {vendor_id!r}; create it with 'vendor create'")
    secret = create_webhook_secret(db, vendor_id)
    click.echo(f"new webhook signing secret of {vendor_id} (store it now, it is not shown again; deliveries from "
               "now on are signed with it, including retries of earlier events):", err=True)
    click.echo(secret)


@cli.command("demo-key")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def demo_key(path: Path) -> None:
    """Ensure the 'demo' vendor exists, give it a fresh key and write it to PATH."""
    db = _db()
    db.migrate()
    if db.get_vendor("demo") is None:
        db.create_vendor("demo", "Demo vendor")
    key = create_api_key(db, "demo")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(key + "\n")
    path.chmod(0o600)
    if db.get_webhook_secret("demo") is None:  # for trying callbackUrl; kept across restarts
        secret_file = path.with_name("demo-webhook-secret")
        secret_file.write_text(create_webhook_secret(db, "demo") + "\n")
        secret_file.chmod(0o600)
    click.echo(key)


cli.add_command(dead_letters)  # dead-letters list | requeue | delete (service/admin/dead_letters_cli.py)


@cli.command()
@click.option("--older-than", "older_than", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="only rows unchanged for this many seconds (leave just-submitted work alone)")
@click.option("--dry-run", is_flag=True, help="report what would be done; change nothing")
@click.option("--every", type=click.FloatRange(min=0), default=0.0,
              help="keep running, a pass every this many seconds (the Procfile's reconciler); 0: once")
def reconcile(older_than: float, dry_run: bool, every: float) -> None:
    """Queue again the unfinished records and batch images whose jobs Redis lost (ops/reconcile.py)."""
    import json
    import logging
    import time

    import redis

    from core.errors import JobError
    from core.logs import configure_logging
    from core.redis_urls import redis_client
    from ops.reconcile import reconcile as run_reconcile

    settings = Settings.from_env()
    conn = redis_client(settings.redis_url, socket_timeout=30, socket_connect_timeout=5)
    db = _db()
    if every:
        configure_logging(settings)
    while True:
        try:
            result = run_reconcile(db, conn, settings, older_than_s=older_than, dry_run=dry_run)
            click.echo(json.dumps({"dryRun": dry_run, **result.summary()}, sort_keys=True))
        except (redis.RedisError, JobError) as exc:
            if not every:
                raise click.ClickException(f"reconcile could not finish: {exc}") from exc
            # Redis or the database is down: the next pass tries again.
            logging.getLogger(__name__).warning("reconcile pass failed, retrying in %gs: %s", every, exc)
        if not every:
            return
        time.sleep(every)


@cli.command()
@click.option("--older-than-days", "older_than_days", type=click.FloatRange(min=0), default=None,
              help="retention in days (default: CLEANUP_RETENTION_DAYS, 90)")
@click.option("--dry-run", is_flag=True, help="count what would be deleted; delete nothing")
@click.option("--every", type=click.FloatRange(min=0), default=0.0,
              help="keep running, a pass every this many seconds (the Procfile's cleanup); 0: once")
def cleanup(older_than_days: float | None, dry_run: bool, every: float) -> None:
    """Delete finished records and batches, and their local output files, past the retention (ops/cleanup.py)."""
    import json
    import logging
    import time

    from core.errors import JobError
    from core.logs import configure_logging
    from ops.cleanup import cleanup as run_cleanup

    settings = Settings.from_env()
    db = _db()
    if every:
        configure_logging(settings)
    while True:
        days = settings.cleanup_retention_days if older_than_days is None else older_than_days
        try:
            result = run_cleanup(db, settings, retention_days=days, dry_run=dry_run)
            click.echo(json.dumps({"dryRun": dry_run, "retentionDays": days, **result.summary()}, sort_keys=True))
        except (JobError, OSError) as exc:
            if not every:
                raise click.ClickException(f"cleanup could not finish: {exc}") from exc
            # The database is down, or a file could not be removed: the next pass tries again.
            logging.getLogger(__name__).warning("cleanup pass failed, retrying in %gs: %s", every, exc)
        if not every:
            return
        time.sleep(every)


@cli.command("convert-pickled-jobs")
@click.option("--dry-run", is_flag=True, help="list what would be converted; change nothing")
def convert_pickled_jobs(dry_run: bool) -> None:
    """Rewrite jobs a pickling release left in Redis as JSON, loading plain values only (ops/pickled_jobs.py)."""
    import json

    from core.redis_urls import redis_client
    from ops.pickled_jobs import convert_pickled_jobs as run_conversion

    settings = Settings.from_env()
    conn = redis_client(settings.redis_url, socket_timeout=30, socket_connect_timeout=5)
    report = run_conversion(conn, dry_run=dry_run)
    click.echo(json.dumps({"dryRun": dry_run, **report.summary()}, sort_keys=True))
    if report.refused:
        raise click.ClickException(f"{len(report.refused)} job(s) hold more than plain values and were left as "
                                   "they are; delete them with `dead-letters delete` or by hand (listed above)")


def main() -> None:
    """Console entry point: a setting that cannot be read is a one-line error, not a traceback."""
    try:
        cli(prog_name="python -m service.cli")
    except SettingError as exc:
        raise SystemExit(f"error: {exc}") from None



if __name__ == "__main__":
    main()
