"""Procfile, compose.yaml and scripts/respawn: the deploy files say what the code expects."""
from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from core import contracts
from tests.conftest import ROOT


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


NOT_WORKERS = ("release", "web", "reconciler", "cleanup")


def test_procfile_has_web_and_a_worker_per_seed_queue() -> None:
    entries = procfile()
    assert entries["web"].startswith("gunicorn -c service/gunicorn.conf.py service.wsgi:app")
    served: set[str] = set()
    assert entries["reconciler"].startswith("python -m service.cli reconcile --every ")
    # Heroku/Dokku run `release` once per deploy, before the new processes start.
    assert entries["release"] == "python -m service.cli migrate"
    assert entries["cleanup"].startswith("python -m service.cli cleanup --every ")
    for name, command in entries.items():
        if name in NOT_WORKERS:
            continue
        argv = shlex.split(command)
        assert argv[:4] == ["rq", "worker", "-c", "jobs.settings"], command
        assert "--with-scheduler" in argv  # retry backoff needs RQ's scheduler
        # settles a job whose work-horse died (jobs/worker.py)
        assert argv[argv.index("-w") + 1] == "jobs.worker.ImageQueueWorker", command
        queues = [arg for arg in argv if arg in contracts.ALL_QUEUES]
        assert queues, f"{name} listens on no known queue: {command}"
        assert queues[0].startswith(name.replace("_", "-")), "each worker kind's own queue comes first"
        served.update(queues)
    assert set(contracts.ALL_QUEUES) <= served, set(contracts.ALL_QUEUES) - served


def test_compose_services_match_the_procfile() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    for name in ("redis", "mysql", "rembg-1", "rembg-2", "rembg-3", "web", "rq-dashboard", "migrate",
                 "reconciler"):
        assert name in services, name
    assert "--appendonly" in services["redis"]["command"] and "noeviction" in services["redis"]["command"]
    # The standalone dashboard reads our JSON jobs (core/rqjson.py); with pickle it cannot open one.
    assert "python -m rq_dashboard --json " in services["rq-dashboard"]["command"][-1]
    for queue, replicas in contracts.DEFAULT_WORKERS.items():
        worker = services[f"worker-{queue}"]
        assert worker["restart"] == "unless-stopped"
        assert worker["deploy"]["replicas"] == replicas
        assert worker["command"][:4] == ["rq", "worker", "-c", "jobs.settings"]
        assert worker["command"][worker["command"].index("-w") + 1] == "jobs.worker.ImageQueueWorker"
        assert worker["command"][worker["command"].index("--with-scheduler") + 1:][-1] in contracts.ALL_QUEUES


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="scripts/test installs docker-compose")
def test_docker_compose_accepts_compose_yaml() -> None:
    out = subprocess.run(["docker-compose", "-f", str(ROOT / "compose.yaml"), "config", "--services"],
                         capture_output=True, text=True, check=True)
    assert "worker-face-crop" in out.stdout.split()


def test_respawn_restarts_a_dying_command_and_stops_on_sigterm(tmp_path: Path) -> None:
    marker = tmp_path / "runs"
    proc = subprocess.Popen([str(ROOT / "scripts" / "respawn"), "sh", "-c", f"echo run >> {marker}; exit 3"],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (not marker.exists() or len(marker.read_text().split()) < 2):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert len(marker.read_text().split()) >= 2, "the command was not started again"
    assert "exited with status 3; restarting" in err
    assert proc.returncode == 0


def test_respawn_passes_sigterm_to_a_running_child(tmp_path: Path) -> None:
    marker = tmp_path / "term"
    script = f"trap 'echo got-term > {marker}; exit 0' TERM; while true; do sleep 0.1; done"
    proc = subprocess.Popen([str(ROOT / "scripts" / "respawn"), "bash", "-c", script])
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    assert marker.read_text().strip() == "got-term"
