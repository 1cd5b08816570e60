#!/usr/bin/env python3
"""Reliability and security figures (issue 7): faults, load and hostile input, one command.

    .venv/bin/python scripts/bench_reliability.py                  # the full profile
    .venv/bin/python scripts/bench_reliability.py --profile quick  # what CI runs (tests/reliability)
    .venv/bin/python scripts/bench_reliability.py --only worker_death --only redis

Every scenario starts its own private stack (redis-server, Gunicorn, `rq worker` processes,
SQLite or a private MariaDB, rembg servers where it needs them) in a temporary folder, breaks
something on purpose, and prints what it measured beside the target each figure must meet.
The exit status is 1 when any figure missed its target. Scenario code lives in
tests/reliability/ so that the CI tests (quick profile) and this script run the same code.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.reliability.report import PROFILES, Report  # noqa: E402

# name -> module in tests/reliability with run(profile, workdir) -> Report (issue 7, items 1-7)
SCENARIOS = {
    "worker_death": "tests.reliability.worker_death",      # 1. SIGKILL workers mid-batch
    "duplicates": "tests.reliability.duplicates",          # 7. re-run after parent kill; warm shutdown
    "redis": "tests.reliability.redis_faults",             # 2. Redis killed, down, no persistence
    "api_faults": "tests.reliability.api_faults",          # 2. API answers while Redis is down/frozen
    "dependencies": "tests.reliability.dependencies",      # 3. rembg, MySQL, storage failing
    "load": "tests.reliability.load",                      # 4. sustained submissions (wrk)
    "hostile": "tests.reliability.hostile",                # 5. hostile input corpus
    "isolation": "tests.reliability.isolation",            # 6. tenant isolation probes
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=PROFILES, default="full")
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="run only these scenarios")
    parser.add_argument("--keep", action="store_true", help="keep the work folders (logs) afterwards")
    args = parser.parse_args()
    names = args.only or list(SCENARIOS)
    reports: list[Report] = []
    started = time.monotonic()
    for name in names:
        module = importlib.import_module(SCENARIOS[name])
        workdir = Path(tempfile.mkdtemp(prefix=f"iq-rel-{name}-"))
        print(f"-- running {name} ({args.profile}) in {workdir}", file=sys.stderr, flush=True)
        try:
            report = module.run(args.profile, workdir)
        except Exception:  # noqa: BLE001 (a crashed scenario is a failed figure, and the rest still run)
            report = Report(name, args.profile)
            report.check("scenario ran to the end", traceback.format_exc(limit=8), False, "no exception")
            report.done()
        reports.append(report)
        print(report.render(), flush=True)
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    failed = [r.scenario for r in reports if not r.ok]
    print(f"\n{len(reports)} scenario(s), profile {args.profile}, {time.monotonic() - started:.0f} s: "
          + (f"FAILED: {', '.join(failed)}" if failed else "all figures met their targets"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
