"""Operator CLI: `python -m service.cli --help`.

  migrate                       create or upgrade the database schema (idempotent)
  vendor create ID [--name N]   create a vendor and print its first API key, once
  vendor add-key ID             print a new additional key for a vendor
  vendor revoke-keys ID         revoke every key of a vendor
  demo-key PATH                 ensure vendor 'demo' exists, give it a new key, write it to PATH
"""
from __future__ import annotations

from pathlib import Path

import click

from jobs.config import Settings
from jobs.contracts import ID_PATTERN
from jobs.records import Database, connect

from .auth import create_api_key


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
    click.echo(f"vendor {vendor_id} created; API key (store it now, it is not shown again):", err=True)
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
    click.echo(key)


def main() -> None:
    """Console entry point."""
    cli(prog_name="python -m service.cli")


if __name__ == "__main__":
    main()
