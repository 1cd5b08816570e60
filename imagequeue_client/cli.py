"""``python -m imagequeue_client``: submit photos, URL lists and ZIPs, watch them, download results.

Key and server: ``--api-key`` or ``IMAGEQUEUE_API_KEY``; ``--url`` or ``IMAGEQUEUE_URL``. The final
JSON (the submission, or the job/batch once finished with ``--wait``/``--watch``) goes to stdout;
progress bars and messages go to stderr. Bars need tqdm (the ``[cli]`` extra) and a terminal
on stderr: without tqdm, or when stderr is a file or a pipe, the CLI works the same without
them (``--progress`` forces them into a pipe, ``--quiet`` turns them off). Exit status: 0 done,
1 error or the job/batch failed, 2 bad usage, 3 a batch completed with errors.
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


_hinted: list[bool] = []  # the missing-tqdm hint is said once per run


def _no_bar(done: float, total: float | None, postfix: str | None) -> None:
    return None


@contextmanager
def _bar(args: argparse.Namespace, total: float | None, unit: str, desc: str,
         **kwargs: Any) -> Iterator[Callable[[float, float | None, str | None], None]]:
    """A progress bar on stderr; yields update(done, total, postfix).

    None (a no-op update) with --quiet, when stderr is not a terminal (unless --progress), or
    when tqdm is not installed (the client's ``[cli]`` extra): the command works the same.
    """
    if args.quiet or not (args.progress or sys.stderr.isatty()):
        yield _no_bar
        return
    try:
        from tqdm import tqdm
    except ImportError:
        if not _hinted:
            _hinted.append(True)
            _say("(no progress bars: tqdm is not installed; pip install 'imagequeue-client[cli]')")
        yield _no_bar
        return
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


def _photo(args: argparse.Namespace) -> dict[str, Any]:
    """PHOTO_URL, or a local file sent itself (then --wait asks the server to wait, up to 30 s)."""
    if args.photo_url.startswith(("http://", "https://")):
        return {"photo_url": args.photo_url}
    if not os.path.isfile(args.photo_url):
        raise SystemExit(f"{args.photo_url!r} is neither an http(s) URL nor a file")
    return {"file": args.photo_url, "wait": 30.0 if (args.wait or args.download) else None}


def cmd_crop(client: Client, args: argparse.Namespace) -> int:
    """crop PHOTO_URL|FILE: queue a face crop."""
    submitted = client.crop_face(args.record, args.project, mode=args.mode, options=_options(args.option),
                                 callback_url=args.callback_url, **_photo(args))
    _say(f"queued face crop job {submitted['jobId']} ({submitted.get('estimatedTime')})")
    return _finish_job(client, args, submitted)


def cmd_remove_bg(client: Client, args: argparse.Namespace) -> int:
    """remove-bg PHOTO_URL: queue a background removal."""
    options = _options(args.option) or {}
    if args.bg_color:
        options["bgColor"] = args.bg_color
    submitted = client.remove_background(args.record, args.project, options=options or None,
                                         callback_url=args.callback_url, **_photo(args))
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
                                  options=_options(args.option), callback_url=args.callback_url,
                                  operation=args.operation)
    _say(f"queued batch {submitted['batchId']}: {submitted.get('queued')} images")
    return _finish_batch(client, args, submitted)


def cmd_batch_zip(client: Client, args: argparse.Namespace) -> int:
    """batch-zip FILE.zip: upload a ZIP of photos as a batch."""
    size = os.path.getsize(args.file)
    with _bar(args, size, "B", "upload", unit_scale=True, unit_divisor=1024) as update:
        submitted = client.upload_zip(args.file, args.project, priority=args.priority, mode=args.mode,
                                      options=_options(args.option), callback_url=args.callback_url,
                                      on_progress=lambda sent, total: update(sent, total, None),
                                      operation=args.operation)
    _say(f"uploaded batch {submitted['batchId']}: {submitted.get('imageCount')} images")
    return _finish_batch(client, args, submitted)


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    """cancel JOB_ID: cancel a waiting, delayed or active job."""
    _print(client.cancel_job(args.job_id))
    return EXIT_OK


def cmd_records(client: Client, args: argparse.Namespace) -> int:
    """records: list the vendor's records, newest first (JSON lines)."""
    for count, record in enumerate(client.iter_records(project_id=args.project, status=args.status), start=1):
        print(json.dumps(record))
        if args.limit and count >= args.limit:
            break
    return EXIT_OK


def cmd_usage(client: Client, args: argparse.Namespace) -> int:
    """usage: your counts per operation and the rate limits left now (JSON)."""
    _print(client.usage(project_id=args.project))
    return EXIT_OK


def cmd_batch_list(client: Client, args: argparse.Namespace) -> int:
    """batch list: the vendor's batches, newest first (JSON lines)."""
    for count, batch in enumerate(client.iter_batches(project_id=args.project, status=args.status), start=1):
        print(json.dumps(batch))
        if args.limit and count >= args.limit:
            break
    return EXIT_OK


def cmd_batch_cancel(client: Client, args: argparse.Namespace) -> int:
    """batch cancel BATCH_ID: cancel a batch's pending images."""
    answer = client.cancel_batch(args.batch_id)
    _say(answer.get("message", "canceled"))
    _print(answer["batch"])
    return EXIT_OK


def cmd_batch_results_zip(client: Client, args: argparse.Namespace) -> int:
    """batch results-zip BATCH_ID -o FILE.zip: download the batch's results ZIP."""
    target = args.output or f"{args.batch_id}-results.zip"
    # The server builds the ZIP as it sends it: its size is not known, the bar counts bytes.
    with _bar(args, None, "B", "results.zip", unit_scale=True, unit_divisor=1024) as update:
        path = client.download_results(args.batch_id, target, on_progress=lambda done: update(done, None, None))
    _say(f"saved {path} ({path.stat().st_size} bytes)")
    return EXIT_OK


# --- argument parsing ----------------------------------------------------------------------
def _common() -> argparse.ArgumentParser:
    # Accepted before or after the command; SUPPRESS keeps a later absence from erasing an earlier value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help="API base URL (default: $IMAGEQUEUE_URL, "
                        "else http://127.0.0.1:8000)")
    common.add_argument("--api-key", default=argparse.SUPPRESS, help="API key (default: $IMAGEQUEUE_API_KEY)")
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help="seconds per HTTP request (30)")
    common.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    common.add_argument("--progress", action="store_true", default=argparse.SUPPRESS,
                        help="progress bars even when stderr is not a terminal (they need tqdm)")
    return common


def cmd_id_photo(client: Client, args: argparse.Namespace) -> int:
    """id-photo PHOTO_URL|FILE: queue an ID photo (--spec icao|us|schengen|idcard or a custom spec as JSON)."""
    options = _options(args.option) or {}
    if args.background:
        options["background"] = args.background
    spec: Any = args.spec
    if spec.lstrip().startswith("{"):
        try:
            spec = json.loads(spec)
        except ValueError:
            raise SystemExit(f"--spec {args.spec!r} is neither a spec name nor a JSON object") from None
    submitted = client.id_photo(args.record, args.project, spec=spec, options=options or None,
                                callback_url=args.callback_url, **_photo(args))
    _say(f"queued ID photo job {submitted['jobId']} ({submitted.get('estimatedTime')})")
    return _finish_job(client, args, submitted)


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
        sub.add_argument("photo_url", metavar="PHOTO_URL", help="the photo's URL, or a local file to send itself")
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
    photo = job_command("id-photo", cmd_id_photo, "queue an ID photo (cut out, plain background, spec framing, "
                                                   "compliance report) of one portrait")
    photo.add_argument("--spec", default="icao",
                       help="icao, us, schengen, idcard, or a custom spec as JSON "
                            "({widthMm, heightMm, dpi, headMinMm, headMaxMm, eyeMinMm, eyeMaxMm}); default icao")
    photo.add_argument("--background", help="white (default) or a light grey, e.g. lightgrey or #e0e0e0")

    def batch_command(name: str, handler: Callable[[Client, argparse.Namespace], int], help_text: str,
                      file_help: str) -> None:
        sub = commands.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.add_argument("file", metavar="FILE", help=file_help)
        sub.add_argument("--project", required=True, help="your project id (projectId)")
        sub.add_argument("--priority", type=int, default=5, help="1 (least urgent) to 10 (most urgent); default 5")
        sub.add_argument("--operation", choices=("cropFace", "removeBg", "idPhoto"),
                         help="what each image gets (default cropFace)")
        sub.add_argument("--mode", choices=("square", "passport", "idcard"), help="crop mode (default square)")
        sub.add_argument("--option", action="append", metavar="NAME=VALUE",
                         help="an option of the operation, repeatable")
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
    cancel = commands.add_parser("cancel", parents=[common], help="cancel a job")
    cancel.add_argument("job_id", metavar="JOB_ID")
    cancel.set_defaults(handler=cmd_cancel)

    def list_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--project", help="only this projectId")
        sub.add_argument("--status", help="only this status")
        sub.add_argument("--limit", type=int, default=0, help="stop after this many (default: all)")

    records = commands.add_parser("records", parents=[common], help="list your records (JSON lines)")
    list_options(records)
    records.set_defaults(handler=cmd_records)
    usage = commands.add_parser("usage", parents=[common],
                                help="your counts per operation and the rate limits left now")
    usage.add_argument("--project", help="only this projectId's counts")
    usage.set_defaults(handler=cmd_usage)
    batch = commands.add_parser("batch", parents=[common], help="list, cancel, download batches")
    batch_commands = batch.add_subparsers(dest="batch_command", required=True, metavar="BATCH_COMMAND")
    listing = batch_commands.add_parser("list", parents=[common], help="list your batches (JSON lines)")
    list_options(listing)
    listing.set_defaults(handler=cmd_batch_list)
    batch_cancel = batch_commands.add_parser("cancel", parents=[common], help="cancel a batch")
    batch_cancel.add_argument("batch_id", metavar="BATCH_ID")
    batch_cancel.set_defaults(handler=cmd_batch_cancel)
    results_zip = batch_commands.add_parser("results-zip", parents=[common],
                                            help="download the results ZIP (outputs + listing)")
    results_zip.add_argument("batch_id", metavar="BATCH_ID")
    results_zip.add_argument("-o", "--output", metavar="FILE.zip", help="where to save it (<batch>-results.zip)")
    results_zip.set_defaults(handler=cmd_batch_results_zip)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.quiet = getattr(args, "quiet", False)
    args.progress = getattr(args, "progress", False)
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
