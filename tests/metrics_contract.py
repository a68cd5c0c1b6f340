"""The Prometheus metrics the farm exports: names, types and labels, in one place.

The Grafana dashboard and the alert rules (deploy/grafana, deploy/prometheus) may use
only these (tests/test_monitoring_files.py); the real `/metrics` endpoints must export
exactly these. Counter names carry their `_total`; a histogram's series are its name
plus `_bucket` (label `le`), `_sum` and `_count`.

`DASHBOARD` is what every dashboard replica exports (`GET /metrics`): farm-wide figures
read from Redis at scrape time, the same on every replica, so queries take max() across
replicas, never sum(). `SCHEDULER` is what each `renderfarm scheduler` process exports on
its own port (RENDERFARM_SCHEDULER_METRICS_PORT, 9101).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

Kind = Literal["gauge", "counter", "histogram"]


class Metric(NamedTuple):
    kind: Kind
    labels: frozenset[str]


def _m(kind: Kind, *labels: str) -> Metric:
    return Metric(kind, frozenset(labels))


WORKER_CLASSES = ("cpu", "openvino", "gpu")
PENDING_CLASSES = (*WORKER_CLASSES, "auto")  # auto: the job left the class to the dispatcher
PRIORITIES = ("high", "normal", "low")
OUTCOMES = ("succeeded", "failed", "canceled", "lost")  # lost: the worker went away; requeued
STAGES = ("queue_wait", "model_load", "render", "upload")
WORKER_STATES = ("idle", "busy", "draining", "stalled")
AFFINITY_RESULTS = ("hit", "miss")

_PER_WORKER = ("worker", "worker_class")
# A worker's model cache per tier: `ram`, and on a GPU worker `vram` too (worker/tiers.py).
_PER_TIER = (*_PER_WORKER, "tier")

DASHBOARD: dict[str, Metric] = {
    "renderfarm_jobs_pending": _m("gauge", "worker_class", "priority"),
    "renderfarm_jobs_dispatched": _m("gauge", "worker_class"),
    "renderfarm_jobs_running": _m("gauge", "worker_class"),
    "renderfarm_oldest_pending_job_age_seconds": _m("gauge", "worker_class"),
    "renderfarm_jobs_finished_total": _m("counter", "outcome"),
    "renderfarm_job_duration_seconds": _m("histogram", "worker_class"),
    "renderfarm_job_stage_seconds": _m("histogram", "stage"),
    "renderfarm_workers": _m("gauge", "worker_class", "state"),
    "renderfarm_model_cache_bytes": _m("gauge", *_PER_TIER),
    "renderfarm_model_cache_budget_bytes": _m("gauge", *_PER_TIER),
    "renderfarm_worker_rss_bytes": _m("gauge", *_PER_WORKER),
    "renderfarm_vram_used_bytes": _m("gauge", *_PER_WORKER),  # GPU workers only
    "renderfarm_vram_total_bytes": _m("gauge", *_PER_WORKER),  # GPU workers only
    "renderfarm_model_loads_total": _m("counter", *_PER_TIER),
    "renderfarm_model_evictions_total": _m("counter", *_PER_TIER),
    "renderfarm_model_cache_hits_total": _m("counter", *_PER_TIER),
    "renderfarm_dispatch_affinity_total": _m("counter", "result"),
    "renderfarm_dispatches_total": _m("counter", "worker_class"),
    "renderfarm_jobs_recorded": _m("gauge"),
    "renderfarm_jobs_deleted_total": _m("counter"),
    "renderfarm_storage_trash_entries": _m("gauge"),
    "renderfarm_scheduler_leader_present": _m("gauge"),
    "renderfarm_redis_used_memory_bytes": _m("gauge"),
    "renderfarm_redis_maxmemory_bytes": _m("gauge"),  # 0: no limit
}

SCHEDULER: dict[str, Metric] = {
    "renderfarm_scheduler_leader": _m("gauge"),  # 1 on the scheduler holding the lock
}

METRICS: dict[str, Metric] = {**DASHBOARD, **SCHEDULER}

# Labels every scraped series gets from Prometheus itself (target labels; `le` only on
# histogram buckets), allowed in queries beside a metric's own.
TARGET_LABELS = frozenset({"instance", "job"})


def series_names() -> dict[str, tuple[str, Metric]]:
    """Every series name a query may select → (the metric it belongs to, that metric)."""
    names: dict[str, tuple[str, Metric]] = {}
    for name, metric in METRICS.items():
        if metric.kind == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                names[name + suffix] = (name, metric)
        else:
            names[name] = (name, metric)
    return names
