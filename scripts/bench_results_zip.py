"""Stream a results ZIP of many entries from a real Gunicorn API and show its memory stays flat;
then time the cancel of a batch of as many pending images.

    .venv/bin/python scripts/bench_results_zip.py [--entries 100000] [--bytes 600]

Makes a batch of ``--entries`` finished images (small generated outputs in local storage, rows
in SQLite), starts Redis and Gunicorn (one worker) as the tests do, downloads
``GET /api/batch/<id>/results.zip`` and prints the API worker's RSS before, at its highest
while streaming, and after, with the ZIP's size and a check of its listing. Then makes a URL
batch of ``--entries`` pending images (items and record rows) and times
``POST /api/batch/<id>/cancel``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests  # noqa: E402

from core.db.batches import BATCH_PROCESSING, ITEM_COMPLETED, ITEM_PENDING  # noqa: E402
from core.db.database import connect  # noqa: E402


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _workers(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children")
    return [int(pid) for pid in children.read_text().split()] if children.exists() else []


def _api_rss_kb(master: int) -> int:
    """RSS of the Gunicorn worker(s) serving requests (the master only forks them)."""
    return sum(_rss_kb(pid) for pid in _workers(master)) or _rss_kb(master)


def make_batch(database_url: str, storage: Path, base_url: str, batch_id: str, entries: int, size: int) -> None:
    """A batch of ``entries`` completed URL images whose outputs are files under ``storage``."""
    db = connect(database_url)
    db.create_batch(batch_id, "bench", "bench", source="urls", priority=5, mode="square", options={},
                    status=BATCH_PROCESSING)
    folder = storage / "bench" / "batches" / batch_id
    folder.mkdir(parents=True, exist_ok=True)
    payload = b"\xff\xd8\xff\xe0" + os.urandom(max(size - 6, 0)) + b"\xff\xd9"
    step = 2000
    for first in range(0, entries, step):
        seqs = range(first, min(first + step, entries))
        db.add_batch_items(batch_id, [{"seq": seq, "record_id": f"rec-{seq}", "source": "http://photos/x.jpg",
                                       "status": ITEM_PENDING} for seq in seqs])
        for seq in seqs:
            (folder / f"{seq:07d}.jpg").write_bytes(payload)
        db.record_item_outcomes(batch_id, [{
            "seq": seq, "status": ITEM_COMPLETED, "output_width": 300, "output_height": 300,
            "output_url": f"{base_url}/files/bench/batches/{batch_id}/{seq:07d}.jpg"} for seq in seqs])
    db.close()


def make_pending_batch(database_url: str, batch_id: str, entries: int) -> None:
    """A URL batch of ``entries`` pending images with their record rows, as add-images leaves it."""
    db = connect(database_url)
    db.create_batch(batch_id, "bench", "bench", source="urls", priority=5, mode="square", options={},
                    status=BATCH_PROCESSING)
    step = 5000
    for first in range(0, entries, step):
        seqs = range(first, min(first + step, entries))
        db.add_batch_items(batch_id, [{"seq": seq, "record_id": f"p-{seq}", "source": "http://photos/x.jpg",
                                       "status": ITEM_PENDING} for seq in seqs])
        db.queue_records("bench", "bench", [(f"p-{seq}", batch_id, "http://photos/x.jpg") for seq in seqs],
                         job_kind="batch_face_crop")
    db.close()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--bytes", type=int, default=600, help="size of each generated output")
    args = parser.parse_args(argv)

    from tests.conftest import free_port, redis_server_binary, wait_for_port
    from tests.stack import create_vendor, running_stack, stack_env

    with tempfile.TemporaryDirectory(prefix="bench-results-zip-") as name:
        tmp = Path(name)
        redis_port = free_port()
        redis_proc = subprocess.Popen([redis_server_binary(), "--port", str(redis_port), "--bind", "127.0.0.1",
                                       "--save", "", "--appendonly", "no", "--dir", str(tmp)],
                                      stdout=subprocess.DEVNULL)
        try:
            wait_for_port(redis_port)
            port = free_port()
            database_url = f"sqlite:///{tmp / 'bench.sqlite3'}"
            env = stack_env(redis_url=f"redis://127.0.0.1:{redis_port}/0", database_url=database_url,
                            storage_dir=tmp / "files", port=port,
                            extra={"LOG_LEVEL": "WARNING", "RATE_LIMIT_ENABLED": "false", "GUNICORN_WORKERS": "1",
                                   "STORAGE_BACKEND": "local"})
            with running_stack(env, tmp / "logs") as stack:
                key = create_vendor(env, "bench")
                started = time.monotonic()
                make_batch(database_url, tmp / "files", stack.base_url, "bbench", args.entries, args.bytes)
                print(f"made {args.entries} finished outputs of {args.bytes} bytes in "
                      f"{time.monotonic() - started:.1f} s")
                headers = {"X-API-Key": key}
                warm = requests.get(f"{stack.base_url}/api/batch/status/bbench", headers=headers, timeout=30)
                warm.raise_for_status()
                before = _api_rss_kb(stack.api.pid)
                peak = [before]
                done = threading.Event()

                def sample() -> None:
                    while not done.is_set():
                        peak[0] = max(peak[0], _api_rss_kb(stack.api.pid))
                        time.sleep(0.05)

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                target = tmp / "results.zip"
                started = time.monotonic()
                with requests.get(f"{stack.base_url}/api/batch/bbench/results.zip", headers=headers, stream=True,
                                  timeout=600) as response, target.open("wb") as out:
                    response.raise_for_status()
                    for chunk in response.iter_content(256 * 1024):
                        out.write(chunk)
                seconds = time.monotonic() - started
                done.set()
                sampler.join()
                after = _api_rss_kb(stack.api.pid)
                with zipfile.ZipFile(target) as archive:
                    names = archive.namelist()
                    listing = archive.read("results.jsonl").count(b"\n")
                outputs = sum(name.startswith("outputs/") for name in names)
                print(f"results.zip: {target.stat().st_size / 1e6:.1f} MB, {outputs} outputs + {len(names) - outputs} "
                      f"listing files ({listing} rows in results.jsonl), streamed in {seconds:.1f} s")
                print(f"API worker RSS: before {before / 1024:.1f} MiB, highest while streaming "
                      f"{peak[0] / 1024:.1f} MiB, after {after / 1024:.1f} MiB "
                      f"(growth {(peak[0] - before) / 1024:+.1f} MiB for {args.entries} entries)")
                if outputs != args.entries or listing != args.entries:
                    print("MISMATCH: the ZIP does not hold every output and row", file=sys.stderr)
                    return 1
                make_pending_batch(database_url, "bcancel", args.entries)
                started = time.monotonic()
                canceled = requests.post(f"{stack.base_url}/api/batch/bcancel/cancel", headers=headers, timeout=600)
                seconds = time.monotonic() - started
                canceled.raise_for_status()
                batch = canceled.json()["batch"]
                print(f"cancel of a batch of {args.entries} pending images: {seconds:.2f} s "
                      f"(status {batch['status']}, canceled {batch['canceled']}, records marked canceled too)")
                if batch["canceled"] != args.entries:
                    print("MISMATCH: not every pending image was canceled", file=sys.stderr)
                    return 1
        finally:
            redis_proc.terminate()
            redis_proc.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
