"""Fixtures of these tests: ``db`` (tests/records_db.py)."""
from tests.records_db import db  # noqa: F401 (a fixture, found by name)
