"""The web console (/console, docs/console.md) in headless Chromium against the live stack.

Debian's ``chromium`` (scripts/test installs it) runs headless, driven over the DevTools protocol by
clients/js/test-support/console-scenario.mjs (node, no dependencies): it signs in (a wrong key
first), watches a running URL batch finish in the list, opens its grid with the keyboard, checks
that every image loaded, filters the failed images, downloads the results ZIP, runs "try it" (a
passport crop and a background removal of a picked photo, with ``wait``) and takes screenshots at
1280 and 390 px wide, which this test checks are not blank.

IMAGEQUEUE_CONSOLE_SHOT=<path> also writes the 1280 px grid, scaled down, there (docs/images/console.png).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image, ImageStat

from tests.conftest import ROOT
from tests.rembg_servers import RembgServers
from tests.stack import PhotoServer, Stack, all_workers_stack, create_vendor

SCENARIO = ROOT / "clients" / "js" / "test-support" / "console-scenario.mjs"
NODE_MAJOR = 20
PHOTO_DELAY_S = 5.0  # the batch is still running when the console first lists it
FINAL = {"completed", "completed_with_errors", "failed", "canceled"}

pytestmark = pytest.mark.integration


def tool(name: str, why: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is needed by the console test ({why})", pytrace=False)
    return found


@pytest.fixture(scope="module")
def node() -> list[str]:
    """node with a global WebSocket (node 22; node 20.10+ behind --experimental-websocket)."""
    found = tool("node", f"node >= {NODE_MAJOR}: apt-get install nodejs")
    version = subprocess.run([found, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < NODE_MAJOR:
        pytest.fail(f"node >= {NODE_MAJOR} is needed by the console test; found {version}", pytrace=False)
    for flags in ([], ["--experimental-websocket"]):
        probe = subprocess.run([found, *flags, "-e", "process.stdout.write(typeof WebSocket)"],
                               capture_output=True, text=True, check=False)
        if probe.stdout == "function":
            return [found, *flags, "--no-warnings"]
    pytest.fail(f"node {version} has no WebSocket (node 20.10 or later is needed)", pytrace=False)


@pytest.fixture(scope="module")
def chromium() -> str:
    return shutil.which("chromium") or tool("chromium-browser", "headless Chromium: apt-get install chromium")


@pytest.fixture(scope="module")
def stack(redis_url: str, rembg_servers: RembgServers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    rembg_servers.revive()
    with all_workers_stack(redis_url, rembg_servers.urls, tmp_path_factory.mktemp("console-stack"),
                           batch_chunk_size=2) as running:
        yield running


@pytest.fixture(scope="module")
def photos(astronaut_jpeg: bytes) -> Iterator[PhotoServer]:
    server = PhotoServer()
    for name in ("a", "b", "c"):
        server.files[f"/{name}.jpg"] = astronaut_jpeg
        server.delays[f"/{name}.jpg"] = PHOTO_DELAY_S
    yield server
    server.close()


def not_blank(path: Path, width: int) -> dict[str, Any]:
    """A screenshot of the expected width with real content: many colours, some variance."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        colours = len(rgb.getcolors(maxcolors=1 << 22) or [])
        variance = sum(ImageStat.Stat(rgb).var) / 3
        size = rgb.size
    assert size[0] == width, (path, size)
    assert colours > 200 and variance > 200, f"{path} looks blank: {colours} colours, variance {variance:.0f}"
    return {"size": size, "colours": colours, "variance": round(variance)}


def test_the_console_in_headless_chromium(node: list[str], chromium: str, stack: Stack, photos: PhotoServer,
                                          astronaut_jpeg: bytes, tmp_path: Path) -> None:
    # The console's files: the page, and the JavaScript client's modules it imports.
    page = requests.get(f"{stack.base_url}/console", timeout=10)
    assert page.status_code == 200 and "<title>image-queue console</title>" in page.text
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    module = requests.get(f"{stack.base_url}/console/client/index.js", timeout=10)
    assert module.status_code == 200 and "javascript" in module.headers["Content-Type"]
    assert module.text == (ROOT / "clients" / "js" / "src" / "index.js").read_text()  # the same files, no copy
    assert requests.get(f"{stack.base_url}/console/client/index.d.ts", timeout=10).status_code == 404
    assert requests.get(f"{stack.base_url}/console/nope.js", timeout=10).status_code == 404

    key = create_vendor(stack.env, "console")
    images = [{"recordId": f"console-{name}", "imageUrl": photos.url(f"/{name}.jpg")} for name in ("a", "b", "c")]
    images.append({"recordId": "console-missing", "imageUrl": photos.url("/missing.jpg")})
    queued = requests.post(f"{stack.base_url}/api/batch/add-images", headers={"X-API-Key": key}, timeout=10,
                           json={"projectId": "console-demo", "mode": "square", "images": images})
    assert queued.status_code == 202, queued.text
    batch_id = queued.json()["batchId"]

    photo = tmp_path / "me.jpg"
    photo.write_bytes(astronaut_jpeg)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "CONSOLE_URL": f"{stack.base_url}/console/", "CONSOLE_KEY": key, "CONSOLE_BATCH": batch_id,
           "CONSOLE_PHOTO": str(photo), "CONSOLE_OUT": str(out), "CHROMIUM": chromium}
    result = subprocess.run([*node, str(SCENARIO)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=420, check=False)
    report_path = out / "report.json"
    report: dict[str, Any] = json.loads(report_path.read_text()) if report_path.exists() else {}
    context = f"{result.stdout[-6000:]}\n{result.stderr[-4000:]}\n{stack.logs()}"
    assert result.returncode == 0, context

    # Sign-in: the wrong key was refused with a message; the right one is kept in sessionStorage.
    assert "refused" in report["wrongKey"] and "INVALID_API_KEY" in report["wrongKey"], report["wrongKey"]
    signed_in = next(step for step in report["steps"] if step["name"] == "signed in")
    assert signed_in["sessionStorage"] == ["image-queue.console.apiKey"]
    # The list showed the batch running, then finished, with its progress bar and counts.
    assert signed_in["firstStatus"] not in FINAL, report["statuses"]
    assert report["statuses"][-1] == "completed_with_errors", report["statuses"]
    last = report["bars"][-1]
    assert last["max"] == 4 and last["value"] == 4 and "1 failed" in last["counts"], last
    assert "pending" in last["counts"] and "processed" in last["counts"]
    # The grid: one item per image, every image loaded (natural sizes > 0); the missing source says so.
    grid = report["grid"]
    assert sorted(item["status"] for item in grid["items"]) == ["completed", "completed", "completed", "failed"]
    outputs = [image for image in grid["images"] if image["alt"].startswith("Face crop")]
    sources = [image for image in grid["images"] if image["alt"].startswith("Source photo")]
    # Both are the workers' thumbnails (THUMBNAIL_MAX_PX, 256): the 300 px crops shown at 256 px.
    assert len(outputs) == 3 and all(image["w"] == image["h"] == 256 for image in outputs), grid["images"]
    assert all(image["alt"].endswith("(thumbnail)") for image in outputs + sources), grid["images"]
    assert len(sources) == 3 and all(0 < max(image["w"], image["h"]) <= 256 for image in sources), sources
    # The face boxes are drawn over the source previews, in the photo's pixels (sourceWidth x sourceHeight)
    # scaled to the preview: on screen each lies inside its image.
    completed = [item for item in grid["items"] if item["status"] == "completed"]
    assert all(item["boxes"] >= 1 and item["boxInImage"] is True for item in completed), grid["items"]
    assert "IMAGE_NOT_FOUND" in grid["codeOptions"]
    assert report["failed"] == [{"status": "failed", "why": report["failed"][0]["why"]}]
    assert report["failed"][0]["why"].startswith("IMAGE_NOT_FOUND: ")
    # The results ZIP, as the browser saved it.
    with zipfile.ZipFile(report["zip"]["file"]) as archive:
        names = archive.namelist()
    assert "results.jsonl" in names and sum(name.startswith("outputs/") for name in names) == 3, names
    # Try it: a passport crop with the face box and landmarks drawn, a cut-out on a checkerboard.
    crop, cut = report["tries"]["cropFace"], report["tries"]["removeBg"]
    assert crop["job"]["state"] == "completed" and crop["job"]["result"]["mode"] == "passport", crop
    assert crop["boxes"] >= 1 and crop["landmarks"] >= 5, crop
    assert [(image["w"], image["h"]) for image in crop["images"]][-1] == (413, 531), crop["images"]
    assert cut["job"]["state"] == "completed" and cut["checker"] and all(image["w"] > 0 for image in cut["images"])
    # Accessible basics, and no sideways scrolling at 390 px.
    assert report["a11y"] == {"imagesWithoutAlt": 0, "unlabelled": [], "unnamedButtons": 0}, report["a11y"]
    assert report["narrow"]["scrollWidth"] <= 390 and report["tryNarrow"]["scrollWidth"] <= 390, report
    assert not report["pageErrors"], report["pageErrors"]
    # Screenshots at both widths, not blank.
    for name, width in (("batches-1280.png", 1280), ("grid-1280.png", 1280), ("grid-390.png", 390),
                        ("try-1280.png", 1280), ("try-390.png", 390)):
        not_blank(out / name, width)
    shot = os.environ.get("IMAGEQUEUE_CONSOLE_SHOT")
    if shot:
        with Image.open(out / "grid-1280.png") as image:
            size = (960, round(image.height * 960 / image.width))
            small = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
            small.quantize(colors=128).save(shot, optimize=True)
