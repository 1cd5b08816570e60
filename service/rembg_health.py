"""Health of the rembg servers for /api/worker/health: probed live, plus the workers' view.

Stdlib and redis only (the web tier does not import the workers' rembg client). Each instance
in REMBG_URLS is probed with ``GET /openapi.json`` (rembg has no health route; that answers
200 when the server is up), all at once, each within REMBG_PROBE_TIMEOUT_S. ``breaker`` is
what the workers' circuit breaker for that instance says (jobs/rembg_pool.py keeps it in
Redis): ``closed`` in use, ``open`` cooling down after a failure, ``half-open`` to be probed.
"""
from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from core import contracts
from core.config import Settings

# Internal servers: never through HTTP(S)_PROXY.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def probe(url: str, timeout_s: float) -> dict[str, Any]:
    """``{"url", "status": "up"|"down", "latencyMs"|"error"}`` for one rembg instance."""
    started = time.perf_counter()
    try:
        with _OPENER.open(f"{url}/openapi.json", timeout=timeout_s) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        return {"url": url, "status": "down", "error": f"GET /openapi.json answered HTTP {exc.code}"}
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, (TimeoutError, socket.timeout)):
            reason = f"no answer within {timeout_s:g} s (REMBG_PROBE_TIMEOUT_S)"
        return {"url": url, "status": "down", "error": str(reason)}
    if status != 200:
        return {"url": url, "status": "down", "error": f"GET /openapi.json answered HTTP {status}"}
    return {"url": url, "status": "up", "latencyMs": round((time.perf_counter() - started) * 1000, 1)}


def rembg_instances(settings: Settings, redis: Redis | None) -> list[dict[str, Any]]:
    """Every instance of REMBG_URLS with its live status and its breaker state (when Redis is up)."""
    urls = [url.rstrip("/") for url in settings.rembg_urls if url.strip()]
    if not urls:
        return []
    with ThreadPoolExecutor(max_workers=min(len(urls), 16)) as pool:
        entries = list(pool.map(lambda url: probe(url, settings.rembg_probe_timeout_s), urls))
    if redis is not None:
        try:
            states = redis.mget([contracts.REMBG_BREAKER_STATE_KEY.format(url=url) for url in urls])
        except RedisError:
            states = [None] * len(urls)
        for entry, raw in zip(entries, states, strict=True):
            entry["breaker"] = raw.decode() if isinstance(raw, bytes) else "closed"
    return entries
