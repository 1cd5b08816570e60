"""Throughput of core.zipstream.archive: entries/s through iter_archive for a ZIP of many small images.

    .venv/bin/python scripts/bench_archive.py [--entries 100000] [--stored] [--keep PATH]

Builds the ZIP in a temporary folder (a 48x32 JPEG of ~650 B per entry, deflated unless
--stored), then, in a fresh child process so its peak RSS is the reader's own, times
count_image_entries and a full iter_archive pass beside stream-unzip alone (the floor our
guards add to).
"""
from __future__ import annotations

import argparse
import io
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image  # noqa: E402
from stream_unzip import stream_unzip  # noqa: E402

from core.zipstream.archive import ImageEntry, count_image_entries, iter_archive  # noqa: E402


def build(path: Path, entries: int, compression: int) -> None:
    """A ZIP of ``entries`` copies of one small JPEG under photos/."""
    out = io.BytesIO()
    Image.new("RGB", (48, 32), (200, 30, 30)).save(out, format="JPEG")
    jpeg = out.getvalue()
    with zipfile.ZipFile(path, "w", compression) as zf:
        for i in range(entries):
            zf.writestr(f"photos/{i:07}.jpg", jpeg)


def plain_stream_unzip(path: Path) -> int:
    """Entries through stream-unzip alone, 64 KiB reads, every chunk joined."""
    def chunks():
        with open(path, "rb") as f:
            while chunk := f.read(64 * 1024):
                yield chunk
    count = 0
    for _, _, data in stream_unzip(chunks()):
        b"".join(data)
        count += 1
    return count


def measure(path: Path) -> None:
    """Time the three passes over ``path`` and print this process's peak RSS."""
    started = time.perf_counter()
    counted = count_image_entries(path)
    print(f"count_image_entries: {counted} in {(time.perf_counter() - started) * 1000:.0f} ms")

    started = time.perf_counter()
    plain = plain_stream_unzip(path)
    floor = time.perf_counter() - started
    print(f"stream-unzip alone:  {plain / floor:,.0f} entries/s ({floor:.2f} s)")

    started = time.perf_counter()
    images = sum(1 for entry in iter_archive(path) if isinstance(entry, ImageEntry))
    elapsed = time.perf_counter() - started
    print(f"iter_archive:        {images / elapsed:,.0f} entries/s ({elapsed:.2f} s, {images} images)")
    print(f"peak RSS of the reading process: {peak_rss_kib() / 1024:.0f} MiB")


def peak_rss_kib() -> int:
    """This process's own peak RSS: VmHWM (ru_maxrss can carry the parent's across fork + exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    """Build, then measure in a child process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--stored", action="store_true", help="STORED instead of DEFLATED entries")
    parser.add_argument("--keep", type=Path, help="write the ZIP here instead of a temporary folder")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child's half
    args = parser.parse_args()
    if args.measure:
        measure(args.measure)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "bench.zip"
        started = time.perf_counter()
        build(path, args.entries, zipfile.ZIP_STORED if args.stored else zipfile.ZIP_DEFLATED)
        print(f"built {args.entries} entries, {path.stat().st_size / 1e6:.1f} MB, "
              f"in {time.perf_counter() - started:.1f} s")
        subprocess.run([sys.executable, __file__, "--measure", str(path)], check=True)


if __name__ == "__main__":
    main()
