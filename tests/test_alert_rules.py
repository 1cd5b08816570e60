"""deploy/prometheus/alerts.yml: valid rules (promtool check), each alert firing on what it is for and
quiet just below its threshold (promtool's rule unit tests, deploy/prometheus/alerts_test.yml), and
every metric the rules read really on /metrics."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from core import metrics, rqjson
from core.db.database import connect
from service import create_app
from tests.conftest import ROOT

RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
TOKEN = "prom-token-0123456789"


def promtool() -> str:
    """Debian's promtool (package prometheus); ./scripts/test puts it in var/cache/bin when missing."""
    found = shutil.which("promtool") or str(ROOT / "var" / "cache" / "bin" / "promtool")
    if not Path(found).is_file():
        pytest.fail("promtool is needed to check deploy/prometheus/alerts.yml: run ./scripts/test (it extracts it "
                    "from Debian's prometheus package into var/cache/bin) or apt-get install prometheus",
                    pytrace=False)
    return found


def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    check = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0 and "SUCCESS: 5 rules found" in check.stdout, check.stdout + check.stderr
    test = subprocess.run([promtool(), "test", "rules", "alerts_test.yml"], cwd=RULES.parent, capture_output=True,
                          text=True)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr


def test_the_rules_cover_the_design_documents_list() -> None:
    rules = {rule["alert"]: rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    assert {"ImageQueueBacklog", "ImageQueueJobFailureRate", "ImageQueueNoWorkers", "ImageQueueRembgDown"} <= set(rules)
    assert "> 100" in rules["ImageQueueBacklog"]["expr"] and rules["ImageQueueBacklog"]["for"]
    assert "> 0.01" in rules["ImageQueueJobFailureRate"]["expr"]
    for rule in rules.values():
        assert rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"]


def test_every_metric_the_rules_read_is_on_metrics(redis_conn: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    connect(db_url).migrate()
    app = create_app({"redis_url": redis_url, "database_url": db_url, "storage_dir": str(tmp_path / "files"),
                      "rembg_urls": ("http://127.0.0.1:9",), "metrics_token": TOKEN})
    # One finished and one failed job, so the counters have samples.
    queue = rqjson.queue("face-crop", connection=redis_conn)
    done, failed = queue.enqueue("builtins.len", [1]), queue.enqueue("builtins.len", [2])
    metrics.job_succeeded(redis_conn, done)
    metrics.job_failed(redis_conn, failed, "NO_FACE", final=True)
    text = app.test_client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).get_data(as_text=True)
    exposed = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    used = set(re.findall(r"\bimagequeue_[a-z_]+", RULES.read_text()))
    assert used and used <= exposed, f"the rules read metrics /metrics does not have: {sorted(used - exposed)}"
