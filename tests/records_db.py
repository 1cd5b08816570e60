"""The ``db`` fixture of the core and jobs tests: a migrated, empty records database on each backend.

Imported by tests/core/conftest.py and tests/jobs/conftest.py (one definition, two users).

Modules that need a different database (seeded vendors, SQLite only) define their own ``db``,
which takes precedence over this one.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.db.database import Database, connect


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated, empty database: SQLite, then a fresh MariaDB database (tests.conftest.mysql_url)."""
    url = (f"sqlite:///{tmp_path / 'db.sqlite3'}" if request.param == "sqlite"
           else str(request.getfixturevalue("mysql_url")))
    database = connect(url)
    database.migrate()
    yield database
    database.close()
