"""The dependency locks (docs/dependencies.md): every package pinned with hashes, the locks fresh
for their inputs and in step with each other, the versions the security and OpenCV rules ask for,
and this virtualenv installed from the dev lock."""
from __future__ import annotations

import re
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import ROOT

LOCKS = ("requirements.lock", "requirements-dev.lock", "requirements-rembg.lock")
INPUTS = {"requirements.lock": ["requirements.in"], "requirements-dev.lock": ["requirements.in", "requirements-dev.in"],
          "requirements-rembg.lock": ["requirements-rembg.txt"]}


def pins(lock: str) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of a pip-compile --generate-hashes file."""
    text = (ROOT / lock).read_text()
    found: dict[str, tuple[str, int]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = re.match(r"([A-Za-z0-9_.\-]+)==(\S+)", block)
        if match:
            found[canonicalize_name(match.group(1))] = (match.group(2), block.count("--hash=sha256:"))
    return found


def inputs(path: str) -> list[Requirement]:
    """The requirements an input file names (options and -r/-c lines left out)."""
    requirements = []
    for line in (ROOT / path).read_text().splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith(("#", "-")):
            requirements.append(Requirement(line))
    return requirements


@pytest.mark.parametrize("lock", LOCKS)
def test_every_package_is_pinned_with_hashes(lock: str) -> None:
    locked = pins(lock)
    assert len(locked) > 10
    unhashed = [name for name, (_, hashes) in locked.items() if hashes == 0]
    assert unhashed == [], f"{lock}: no --hash for {unhashed}; make it with scripts/lock"


@pytest.mark.parametrize("lock", LOCKS)
def test_the_lock_satisfies_its_inputs(lock: str) -> None:
    locked = pins(lock)
    stale = []
    for path in INPUTS[lock]:
        for requirement in inputs(path):
            name = canonicalize_name(requirement.name)
            if name not in locked or not requirement.specifier.contains(locked[name][0], prereleases=True):
                stale.append(f"{requirement} ({path}): locked {locked.get(name, ('nothing',))[0]}")
    assert stale == [], f"{lock} is stale, run scripts/lock: {stale}"


def test_the_dev_lock_holds_the_runtime_lock_unchanged() -> None:
    runtime, dev = pins("requirements.lock"), pins("requirements-dev.lock")
    different = {name: (version, dev.get(name, ("missing",))[0]) for name, (version, _) in runtime.items()
                 if dev.get(name, ("missing",))[0] != version}
    assert different == {}, "the images and the tests would run different versions; run scripts/lock"


def test_inputs_live_in_the_in_files_only() -> None:
    # Dependencies are added to requirements.in / requirements-dev.in, then locked (scripts/lock).
    assert not (ROOT / "requirements.txt").exists() and not (ROOT / "requirements-dev.txt").exists()


def test_versions_the_issues_ask_for() -> None:
    runtime = {name: Version(version) for name, (version, _) in pins("requirements.lock").items()}
    assert runtime["pillow"] >= Version("12.3")  # decodes untrusted images: the 2026 security fixes
    assert Version("4.14") <= runtime["opencv-python-headless"] < Version("5")  # 5.x has no Haar cascades
    assert runtime["numpy"] >= Version("2.3")  # OpenCV 4.14 lifted 4.12's numpy<2.3 cap
    assert runtime["redis"] >= Version("8.2") and runtime["requests"] >= Version("2.34")
    assert runtime["mysql-connector-python"] >= Version("26.10")


def test_this_virtualenv_is_installed_from_the_dev_lock() -> None:
    wrong = {}
    for name, (version, _) in pins("requirements-dev.lock").items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed != version:
            wrong[name] = (version, installed)
    assert wrong == {}, f"(locked, installed) differ: {wrong}; ./scripts/test installs requirements-dev.lock"
