"""``python -m imagequeue_client``: the command line client."""
from __future__ import annotations

from .cli import main

raise SystemExit(main())
