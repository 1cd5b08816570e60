"""An app on the private Redis and a fresh SQLite file, with vendors and their API keys."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flask import Flask

from core.db.database import Database, connect
from service import create_app
from service.auth import create_api_key


@contextmanager
def vendor_app(redis_url: str, tmp_path: Path, vendors: tuple[str, ...] = ("acme", "globex"), *,
               prepare: Callable[[Database], None] | None = None, **settings: Any) -> Iterator[Flask]:
    """Yield an app whose ``config["KEYS"]`` maps each vendor to a fresh API key; close it after."""
    db_url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    db = connect(db_url)
    db.migrate()
    for vendor in vendors:
        db.create_vendor(vendor, vendor.title())
    if prepare is not None:
        prepare(db)
    app = create_app({"redis_url": redis_url, "database_url": db_url, **settings})
    app.config["KEYS"] = {vendor: create_api_key(db, vendor) for vendor in vendors}
    try:
        yield app
    finally:
        app.extensions["image_queue"].close()
        db.close()
