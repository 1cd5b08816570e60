"""Settings (core/config.py): a value that cannot be read names its variable and what it expects."""
from __future__ import annotations

import subprocess
import sys

import pytest

from core.config import SettingError, Settings
from tests.conftest import ROOT


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("JOB_RETRIES", "three", "JOB_RETRIES='three' is not valid: expected a whole number, e.g. 3 (the default)"),
    ("API_REDIS_TIMEOUT_S", "fast", "expected a number of seconds, e.g. 0.25"),
    ("BATCH_MAX_UPLOAD_BYTES", "5G", "expected a whole number of bytes"),
    ("JOB_RETRY_INTERVALS_S", "2,4,x", "expected comma-separated whole numbers of seconds, e.g. 2,4,8"),
    ("RATE_LIMIT_ENABLED", "maybe", "expected true or false"),
])
def test_a_bad_value_names_the_variable_and_what_it_expects(variable: str, value: str, expected: str) -> None:
    with pytest.raises(SettingError, match=variable) as error:
        Settings.from_env({variable: value})
    assert expected in str(error.value)
    assert isinstance(error.value, ValueError)


def test_good_values_are_read() -> None:
    settings = Settings.from_env({"JOB_RETRIES": "5", "RATE_LIMIT_ENABLED": "off", "API_REDIS_TIMEOUT_S": "0.5",
                                  "JOB_RETRY_INTERVALS_S": "1, 2", "REMBG_URLS": "http://a, http://b"})
    assert (settings.job_retries, settings.rate_limit_enabled, settings.api_redis_timeout_s) == (5, False, 0.5)
    assert settings.job_retry_intervals_s == (1, 2) and settings.rembg_urls == ("http://a", "http://b")


def test_a_command_started_with_a_bad_setting_says_which_one() -> None:
    out = subprocess.run([sys.executable, "-m", "service.cli", "migrate"], cwd=ROOT, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "JOB_RETRIES": "three", "PYTHONPATH": str(ROOT)}, timeout=60)
    assert out.returncode != 0
    assert "JOB_RETRIES='three' is not valid: expected a whole number" in out.stderr
