"""/metrics in Prometheus' text format, read from Redis at scrape time.

Every API process answers the same numbers: counters and histograms are Redis hashes the
workers and the API increment (core/metrics.py), queue depths and worker counts are read live
from RQ's keys, and the rembg servers are probed like /api/worker/health does (cached
METRICS_REMBG_CACHE_S per process, so frequent scrapes do not hammer them). Nothing here is
a per-process prometheus_client counter.

HTTP metrics (``imagequeue_http_*``): every answer of the API is counted by route template
(``/api/image-queue/job/<jobId>``, never the raw path), method and status, and timed, in the
same Redis hashes (one pipelined write per request, after the view ran).

Access: ``Authorization: Bearer <METRICS_TOKEN>`` or the admin's HTTP Basic credentials
(service/admin/auth.py); 404 while neither is configured. README "Operating it" lists the
metrics.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from rq import Queue
from rq.worker import Worker

from core import contracts
from core import metrics as stored
from core.config import Settings
from service.admin.auth import require_metrics_reader
from service.extensions import Backends
from service.rembg_health import rembg_instances

log = logging.getLogger(__name__)

bp = Blueprint("metrics", __name__)
bp.before_request(require_metrics_reader)

PREFIX = "imagequeue_"
QUEUE_STATES = ("waiting", "active", "delayed", "deferred", "completed", "failed")
BREAKER_STATES = ("closed", "open", "half-open")


def queue_depths(queue: Queue) -> dict[str, int]:
    """Jobs per state of one queue, read-only (no registry cleanup: that would run job callbacks here)."""
    return {
        "waiting": queue.count,
        "active": queue.started_job_registry.get_job_count(cleanup=False),
        "delayed": queue.scheduled_job_registry.get_job_count(cleanup=False),
        "deferred": queue.deferred_job_registry.get_job_count(cleanup=False),
        "completed": queue.finished_job_registry.get_job_count(cleanup=False),
        "failed": queue.failed_job_registry.get_job_count(cleanup=False),
    }


class RembgProbeCache:
    """The rembg servers' probe results, reused for ``ttl_s`` seconds by one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at = float("-inf")
        self._entries: list[dict[str, Any]] = []

    def get(self, settings: Settings, redis: Any) -> list[dict[str, Any]]:
        """Every instance of REMBG_URLS with status, latency and breaker state."""
        with self._lock:
            if time.monotonic() - self._at >= settings.metrics_rembg_cache_s:
                self._entries = rembg_instances(settings, redis)
                self._at = time.monotonic()
            return self._entries


class ImageQueueCollector(Collector):
    """Builds every metric family from Redis (and the rembg probes) on each collect()."""

    def __init__(self, backends: Backends, rembg_cache: RembgProbeCache) -> None:
        self.backends = backends
        self.rembg_cache = rembg_cache

    def collect(self) -> Iterator[Metric]:
        """Yield the families; Redis being down yields imagequeue_redis_up 0 and the rembg ones."""
        b = self.backends
        redis_up = GaugeMetricFamily(PREFIX + "redis_up", "1 if Redis answered this scrape, else 0.")
        families: list[Metric] = []
        try:
            families = self._from_redis(b)
            redis_up.add_metric([], 1)
        except RedisError as exc:
            log.warning("metrics: Redis unavailable: %s", exc)
            redis_up.add_metric([], 0)
        yield redis_up
        yield from families
        yield from self._rembg(b, redis_ok=bool(families))

    def _from_redis(self, b: Backends) -> list[Metric]:
        depths = GaugeMetricFamily(PREFIX + "queue_jobs", "Jobs in each RQ queue and registry, now.",
                                   labels=["queue", "state"])
        workers = GaugeMetricFamily(PREFIX + "workers", "Live rq worker processes listening on each queue.",
                                    labels=["queue"])
        for name in contracts.ALL_QUEUES:
            queue = b.queue(name)
            for state, count in queue_depths(queue).items():
                depths.add_metric([name, state], count)
            workers.add_metric([name], Worker.count(queue=queue))
        counts = stored.read_all(b.redis)
        return [depths, workers, *self._counters(counts), self._durations(counts[stored.JOB_DURATION]),
                *self._http(counts)]

    @staticmethod
    def _counters(counts: dict[str, dict[tuple[str, ...], float]]) -> list[Metric]:
        specs = [
            (stored.JOBS_FINISHED, "jobs_finished", "Jobs that completed, by queue.", ["queue"]),
            (stored.JOBS_FAILED, "jobs_failed", "Jobs that failed for good (no retry left), by queue and "
                                                "error code.", ["queue", "code"]),
            (stored.JOB_RETRIES, "job_retries", "Failed job attempts that RQ retries, by queue and error code.",
             ["queue", "code"]),
            (stored.VENDOR_SUBMITTED, "vendor_images_submitted", "Images queued, by vendor and kind "
                                                                 "(face_crop, remove_bg, batch_face_crop).",
             ["vendor", "kind"]),
            (stored.VENDOR_FINISHED, "vendor_images_finished", "Images that reached their end, by vendor, kind "
                                                               "and status (completed, failed).",
             ["vendor", "kind", "status"]),
        ]
        families: list[Metric] = []
        for key, name, documentation, labels in specs:
            family = CounterMetricFamily(PREFIX + name, documentation, labels=labels)
            for label_values, value in sorted(counts[key].items()):
                if len(label_values) == len(labels):
                    family.add_metric(list(label_values), value)
            families.append(family)
        return families

    @staticmethod
    def _durations(raw: dict[tuple[str, ...], float], name: str = "job_duration_seconds",
                   documentation: str = "Duration of job attempts (start to end), by queue and outcome.",
                   labels: tuple[str, str] = ("queue", "outcome"),
                   bucket_bounds: tuple[float, ...] = stored.DURATION_BUCKETS_S) -> Metric:
        family = HistogramMetricFamily(PREFIX + name, documentation, labels=list(labels))
        per_bucket: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        for label_values, value in raw.items():
            if len(label_values) == 3:
                per_bucket[(label_values[0], label_values[1])][label_values[2]] = value
        bounds = [repr(bound) for bound in bucket_bounds] + [stored.INF]
        for (first, second), values in sorted(per_bucket.items()):
            cumulative, buckets = 0.0, []
            for bound in bounds:
                cumulative += values.get(bound, 0.0)
                buckets.append((bound, cumulative))
            family.add_metric([first, second], buckets, sum_value=values.get(stored.SUM, 0.0))
        return family

    @classmethod
    def _http(cls, counts: dict[str, dict[tuple[str, ...], float]]) -> list[Metric]:
        requests_total = CounterMetricFamily(PREFIX + "http_requests", "API answers, by route template, method "
                                             "and status code.", labels=["route", "method", "status"])
        errors = CounterMetricFamily(PREFIX + "http_request_errors", "API answers with a 5xx status (server-side "
                                     "errors, Redis or the database down), by route template and method.",
                                     labels=["route", "method"])
        per_route: dict[tuple[str, str], float] = defaultdict(float)
        for labels, value in sorted(counts[stored.HTTP_REQUESTS].items()):
            if len(labels) == 3:
                requests_total.add_metric(list(labels), value)
                per_route.setdefault((labels[0], labels[1]), 0.0)
                if labels[2].startswith("5"):
                    per_route[(labels[0], labels[1])] += value
        for (route, method), value in sorted(per_route.items()):
            errors.add_metric([route, method], value)
        duration = cls._durations(counts[stored.HTTP_DURATION], "http_request_duration_seconds",
                                  "Time from the start of an API request to its answer, by route template and "
                                  "method.", ("route", "method"), stored.HTTP_BUCKETS_S)
        return [requests_total, errors, duration]

    def _rembg(self, b: Backends, *, redis_ok: bool) -> Iterator[Metric]:
        up = GaugeMetricFamily(PREFIX + "rembg_up", "1 if the rembg instance answered GET /openapi.json, else 0.",
                               labels=["instance"])
        latency = GaugeMetricFamily(PREFIX + "rembg_probe_seconds", "Latency of that probe.", labels=["instance"])
        breaker = GaugeMetricFamily(PREFIX + "rembg_breaker_state", "The workers' circuit breaker of the "
                                    "instance: 1 for its current state.", labels=["instance", "state"])
        for entry in self.rembg_cache.get(b.settings, b.redis if redis_ok else None):
            url = entry["url"]
            up.add_metric([url], 1 if entry["status"] == "up" else 0)
            if "latencyMs" in entry:
                latency.add_metric([url], entry["latencyMs"] / 1000)
            if "breaker" in entry:
                for state in BREAKER_STATES:
                    breaker.add_metric([url, state], 1 if entry["breaker"] == state else 0)
        yield from (up, latency, breaker)


_STARTED = "image_queue.request_started"  # request.environ key: perf_counter at the first hook
# Not counted: the liveness probe must touch nothing but the process (service/health.py).
UNCOUNTED_ENDPOINTS = frozenset({"health.livez"})


def _start_timer() -> None:
    request.environ.setdefault(_STARTED, time.perf_counter())


def _count_request(response: Response) -> Response:
    started = request.environ.get(_STARTED)
    if started is not None and request.endpoint not in UNCOUNTED_ENDPOINTS:
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        backends: Backends = current_app.extensions["image_queue"]
        stored.http_request(backends.redis, route, request.method, response.status_code,
                            time.perf_counter() - started)
    return response


def init_app(app: Flask) -> None:
    """Register /metrics with a registry of its own (never prometheus_client's per-process
    default), and count and time every API answer."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ImageQueueCollector(app.extensions["image_queue"], RembgProbeCache()))
    app.extensions["metrics_registry"] = registry
    app.register_blueprint(bp)
    app.before_request_funcs.setdefault(None, []).insert(0, _start_timer)  # before the limiter's hook
    app.after_request(_count_request)


@bp.get("/metrics")
def metrics() -> Response:
    """The Prometheus exposition of every imagequeue_* metric."""
    registry: CollectorRegistry = current_app.extensions["metrics_registry"]
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
