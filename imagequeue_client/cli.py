"""``python -m imagequeue_client``: submit photos, URL lists and ZIPs, watch them, download results.

Key and server: ``--api-key`` or ``IMAGEQUEUE_API_KEY``; ``--url`` or ``IMAGEQUEUE_URL``. The final
JSON (the submission, or the job/batch once finished with ``--wait``/``--watch``) goes to stdout;
progress bars and messages go to stderr. Exit status: 0 done, 1 error or the job/batch failed,
2 bad usage, 3 a batch completed with errors.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from . import __version__
from .client import Client
from .errors import ImageQueueError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_WITH_ERRORS = 0, 1, 2, 3
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+=-]")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def _bar(args: argparse.Namespace, total: float | None, unit: str, desc: str,
         **kwargs: Any) -> Iterator[Callable[[float, float | None, str | None], None]]:
    """A progress bar on stderr (none with --quiet); yields update(done, total, postfix)."""
    if args.quiet:
        yield lambda done, total, postfix: None
        return
    try:
        from tqdm import tqdm
    except ImportError:
        raise SystemExit("progress bars need tqdm: pip install 'imagequeue-client[cli]' (or use --quiet)") from None
    bar = tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True, **kwargs)

    def update(done: float, new_total: float | None = None, postfix: str | None = None) -> None:
        if new_total is not None and new_total != bar.total:
            bar.total = new_total
        bar.n = done
        if postfix is not None:
            bar.set_postfix_str(postfix, refresh=False)
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


def _print(body: Any) -> None:
    print(json.dumps(body, indent=2))


def _safe_name(name: str) -> str:
    return _UNSAFE.sub("_", name).lstrip(".") or "_"


def _extension(url: str) -> str:
    suffix = PurePosixPath(urlsplit(url).path).suffix.lower()
    return suffix if suffix in (".jpg", ".jpeg", ".png", ".webp") else ".jpg"


def _options(pairs: list[str] | None) -> dict[str, Any] | None:
    """--option name=value pairs; values are JSON when they parse (numbers, true), else text."""
    if not pairs:
        return None
    options: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"--option wants name=value, got {pair!r}")
        try:
            options[name] = json.loads(raw)
        except ValueError:
            options[name] = raw
    return options


# --- single jobs ---------------------------------------------------------------------------
def _finish_job(client: Client, args: argparse.Namespace, submitted: dict[str, Any]) -> int:
    if not (args.wait or args.download):
        _print(submitted)
        return EXIT_OK
    job_id = submitted["jobId"]
    with _bar(args, 100, "%", f"job {job_id[:8]}") as update:
        job = client.wait_for_job(job_id, timeout=args.wait_timeout,
                                  on_update=lambda body: update(int(body.get("progress", 0)), None, body.get("state")))
    if job["state"] == "completed" and args.download:
        url = job["result"]["photoUrl"]
        target = Path(args.download) / f"{_safe_name(args.record)}{_extension(url)}"
        job["downloaded"] = [str(client.download(url, target))]
        _say(f"downloaded {target}")
    _print(job)
    if job["state"] != "completed":
        error = job.get("error") or {}
        _say(f"job {job_id} failed: {error.get('code')}: {error.get('message')}")
        return EXIT_FAILED
    return EXIT_OK


def cmd_crop(client: Client, args: argparse.Namespace) -> int:
    """crop PHOTO_URL: queue a face crop."""
    submitted = client.crop_face(args.record, args.project, args.photo_url, args.mode,
                                 options=_options(args.option), callback_url=args.callback_url)
    _say(f"queued face crop job {submitted['jobId']} ({submitted.get('estimatedTime')})")
    return _finish_job(client, args, submitted)


def cmd_remove_bg(client: Client, args: argparse.Namespace) -> int:
    """remove-bg PHOTO_URL: queue a background removal."""
    options = _options(args.option) or {}
    if args.bg_color:
        options["bgColor"] = args.bg_color
    submitted = client.remove_background(args.record, args.project, args.photo_url, options=options or None,
                                         callback_url=args.callback_url)
    _say(f"queued background removal job {submitted['jobId']} ({submitted.get('estimatedTime')})")
    return _finish_job(client, args, submitted)


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    """status JOB_ID: print a job's status."""
    job = client.job(args.job_id)
    _print(job)
    return EXIT_FAILED if job.get("state") == "failed" else EXIT_OK


def cmd_batch_status(client: Client, args: argparse.Namespace) -> int:
    """batch-status BATCH_ID: print a batch's status."""
    batch = client.batch_status(args.batch_id)
    _print(batch)
    return EXIT_FAILED if batch.get("status") == "failed" else EXIT_OK


# --- batches -------------------------------------------------------------------------------
def _read_csv(path: str) -> list[tuple[str, str]]:
    """(recordId, imageUrl) rows of a CSV; a first row naming the columns is skipped."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    if rows and not rows[0][-1].strip().lower().startswith(("http://", "https://")):
        rows = rows[1:]  # header: recordId,imageUrl
    images = []
    for number, row in enumerate(rows, start=1):
        if len(row) < 2:
            raise SystemExit(f"{path}: row {number} needs two columns, recordId and imageUrl: {row!r}")
        images.append((row[0].strip(), row[1].strip()))
    if not images:
        raise SystemExit(f"{path}: no rows of recordId,imageUrl")
    return images


def _download_name(row: dict[str, Any], taken: set[str]) -> str:
    """Where a batch result goes under --download: its recordId, else its ZIP entry's path."""
    if row.get("recordId"):
        stem = _safe_name(str(row["recordId"]))
    else:
        parts = [_safe_name(part) for part in re.split(r"[\\/]+", str(row.get("entry") or ""))
                 if part not in ("", ".", "..")]
        stem = "/".join(parts) or f"item-{row['seq']}"
        stem = str(PurePosixPath(stem).with_suffix("")) if PurePosixPath(stem).suffix else stem
    name = stem + _extension(row["outputUrl"])
    if name in taken:
        name = f"{stem}-{row['seq']}{_extension(row['outputUrl'])}"
    taken.add(name)
    return name


def _download_batch(client: Client, args: argparse.Namespace, batch_id: str) -> list[str]:
    folder = Path(args.download)
    folder.mkdir(parents=True, exist_ok=True)
    rows = list(client.batch_results(batch_id))
    with open(folder / "results.jsonl", "w", encoding="utf-8") as manifest:
        for row in rows:
            manifest.write(json.dumps(row) + "\n")
    done = [row for row in rows if row.get("status") == "completed" and row.get("outputUrl")]
    saved: list[str] = []
    taken: set[str] = set()
    with _bar(args, len(done), "file", "download") as update:
        for row in done:
            saved.append(str(client.download(row["outputUrl"], folder / _download_name(row, taken))))
            update(len(saved), None, None)
    failed = sum(row.get("status") == "failed" for row in rows)
    skipped = sum(row.get("status") == "skipped" for row in rows)
    _say(f"downloaded {len(saved)} file(s) to {folder} ({failed} failed, {skipped} skipped; "
         f"every entry in {folder / 'results.jsonl'})")
    return saved


def _finish_batch(client: Client, args: argparse.Namespace, submitted: dict[str, Any]) -> int:
    batch_id = submitted["batchId"]
    if not (args.watch or args.download):
        _print(submitted)
        return EXIT_OK

    def show(update: Callable[[float, float | None, str | None], None], batch: dict[str, Any]) -> None:
        progress = batch.get("progress") or {}
        total = max(int(batch.get("imageCount") or 0), int(submitted.get("imageCount") or 0)) or None
        update(int(progress.get("processed") or 0), total, f"{batch.get('status')}, {progress.get('failed', 0)} failed")

    with _bar(args, submitted.get("imageCount") or None, "img", f"batch {batch_id[:9]}") as update:
        batch = client.wait_for_batch(batch_id, timeout=args.wait_timeout, on_update=lambda b: show(update, b))
    if args.download:
        batch["downloaded"] = _download_batch(client, args, batch_id)
    _print(batch)
    if batch["status"] == "failed":
        error = batch.get("error") or {}
        _say(f"batch {batch_id} failed: {error.get('code')}: {error.get('message')}")
        return EXIT_FAILED
    return EXIT_WITH_ERRORS if batch["status"] == "completed_with_errors" else EXIT_OK


def cmd_batch_urls(client: Client, args: argparse.Namespace) -> int:
    """batch-urls FILE.csv: queue a batch of recordId,imageUrl rows."""
    images = _read_csv(args.file)
    submitted = client.add_images(args.project, images, priority=args.priority, mode=args.mode,
                                  options=_options(args.option), callback_url=args.callback_url)
    _say(f"queued batch {submitted['batchId']}: {submitted.get('queued')} images")
    return _finish_batch(client, args, submitted)


def cmd_batch_zip(client: Client, args: argparse.Namespace) -> int:
    """batch-zip FILE.zip: upload a ZIP of photos as a batch."""
    size = os.path.getsize(args.file)
    with _bar(args, size, "B", "upload", unit_scale=True, unit_divisor=1024) as update:
        submitted = client.upload_zip(args.file, args.project, priority=args.priority, mode=args.mode,
                                      options=_options(args.option), callback_url=args.callback_url,
                                      on_progress=lambda sent, total: update(sent, total, None))
    _say(f"uploaded batch {submitted['batchId']}: {submitted.get('imageCount')} images")
    return _finish_batch(client, args, submitted)


# --- argument parsing ----------------------------------------------------------------------
def _common() -> argparse.ArgumentParser:
    # Accepted before or after the command; SUPPRESS keeps a later absence from erasing an earlier value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help="API base URL (default: $IMAGEQUEUE_URL, "
                        "else http://127.0.0.1:8000)")
    common.add_argument("--api-key", default=argparse.SUPPRESS, help="API key (default: $IMAGEQUEUE_API_KEY)")
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help="seconds per HTTP request (30)")
    common.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    common = _common()
    parser = argparse.ArgumentParser(prog="python -m imagequeue_client", parents=[common],
                                     description="image-queue command line client")
    parser.add_argument("--version", action="version", version=f"imagequeue-client {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def job_command(name: str, handler: Callable[[Client, argparse.Namespace], int], help_text: str) \
            -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.add_argument("photo_url", metavar="PHOTO_URL")
        sub.add_argument("--record", required=True, help="your record id (recordId)")
        sub.add_argument("--project", required=True, help="your project id (projectId)")
        sub.add_argument("--option", action="append", metavar="NAME=VALUE", help="an option, repeatable")
        sub.add_argument("--callback-url", help="completion webhook URL")
        sub.add_argument("--wait", action="store_true", help="wait until the job is finished, with a progress bar")
        sub.add_argument("--wait-timeout", type=float, default=600.0, help="give up waiting after this many s")
        sub.add_argument("--download", metavar="DIR",
                         help="save the result into DIR as <record>.<ext> (implies --wait)")
        sub.set_defaults(handler=handler)
        return sub

    crop = job_command("crop", cmd_crop, "queue a face crop of one photo")
    crop.add_argument("--mode", default="square", choices=("square", "passport", "idcard"))
    remove = job_command("remove-bg", cmd_remove_bg, "queue a background removal of one photo")
    remove.add_argument("--bg-color", help="flatten onto this colour (#rrggbb) instead of transparency")

    def batch_command(name: str, handler: Callable[[Client, argparse.Namespace], int], help_text: str,
                      file_help: str) -> None:
        sub = commands.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.add_argument("file", metavar="FILE", help=file_help)
        sub.add_argument("--project", required=True, help="your project id (projectId)")
        sub.add_argument("--priority", type=int, default=5, help="1 (least urgent) to 10 (most urgent); default 5")
        sub.add_argument("--mode", choices=("square", "passport", "idcard"), help="crop mode (default square)")
        sub.add_argument("--option", action="append", metavar="NAME=VALUE", help="a crop option, repeatable")
        sub.add_argument("--callback-url", help="completion webhook URL of the batch")
        sub.add_argument("--watch", action="store_true", help="follow the batch with a progress bar until it ends")
        sub.add_argument("--wait-timeout", type=float, default=24 * 3600.0, help="give up watching after this many s")
        sub.add_argument("--download", metavar="DIR", help="save every result into DIR (implies --watch)")
        sub.set_defaults(handler=handler)

    batch_command("batch-urls", cmd_batch_urls, "queue a batch from a CSV of recordId,imageUrl rows",
                  "CSV file: recordId,imageUrl per row (a header row is skipped)")
    batch_command("batch-zip", cmd_batch_zip, "upload a ZIP of photos as a batch", "ZIP file")
    status = commands.add_parser("status", parents=[common], help="print a job's status")
    status.add_argument("job_id", metavar="JOB_ID")
    status.set_defaults(handler=cmd_status)
    batch_status = commands.add_parser("batch-status", parents=[common], help="print a batch's status")
    batch_status.add_argument("batch_id", metavar="BATCH_ID")
    batch_status.set_defaults(handler=cmd_batch_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.quiet = getattr(args, "quiet", False)
    api_key = getattr(args, "api_key", None) or os.environ.get("IMAGEQUEUE_API_KEY")
    if not api_key:
        parser.error("no API key: give --api-key or set IMAGEQUEUE_API_KEY")
    client = Client(getattr(args, "url", None), api_key, timeout=getattr(args, "timeout", 30.0))
    try:
        with client:
            return int(args.handler(client, args))
    except ImageQueueError as exc:
        _say(f"error: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
