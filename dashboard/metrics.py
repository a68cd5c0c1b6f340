"""What operators watch: `GET /metrics` (Prometheus) and `GET /api/v1/fleet/demand` (KEDA).

Both are computed at request time from Redis — the census (scheduler/census.py) and the
workers' heartbeats — so any dashboard replica can be scraped and all answer the same (sum
nothing across replicas: use `max`). Labels never carry job ids, prompts or queue names;
per-worker figures carry the worker's name.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from redis import Redis

from dashboard import farm
from dashboard.accounts import Role
from dashboard.auth import require
from scheduler.census import AFFINITY, ASKED, OUTCOMES, STAGES, Figures, demand, read_census
from scheduler.fleet import WORKER_STATES, draining, live_workers, worker_state
from shared.vocabulary import Hardware, Priority

metrics = Blueprint("metrics", __name__)


def _family(name: str, doc: str, labels: list[str], values: dict[tuple, float]) -> Metric:
    """A gauge, or a counter when `name` ends in `_total` (prometheus-client adds it back)."""
    if name.endswith("_total"):
        family: Metric = CounterMetricFamily(name.removesuffix("_total"), doc, labels=labels)
    else:
        family = GaugeMetricFamily(name, doc, labels=labels)
    for label_values, value in values.items():
        family.add_metric(list(label_values), value)
    return family


class FarmCollector(Collector):
    """Reads the farm's figures from Redis on every scrape."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def collect(self) -> Iterator[Metric]:
        figures = read_census(self.redis)
        yield from self._jobs(figures)
        yield from self._workers(live_workers(self.redis))
        yield _family(
            "renderfarm_scheduler_leader_present",
            "1 when a scheduler holds the dispatcher lock",
            [],
            {(): float(figures.leader_present)},
        )
        yield _family(
            "renderfarm_redis_used_memory_bytes",
            "Redis used_memory",
            [],
            {(): figures.redis_memory["used"]},
        )
        yield _family(
            "renderfarm_redis_maxmemory_bytes",
            "Redis maxmemory (0: no limit)",
            [],
            {(): figures.redis_memory["max"]},
        )

    def _jobs(self, f: Figures) -> Iterator[Metric]:
        yield _family(
            "renderfarm_jobs_pending",
            "Jobs waiting for dispatch, by the class they asked for (auto: any) and priority",
            ["worker_class", "priority"],
            {(cls, p.value): f.pending[(cls, p)] for cls in ASKED for p in Priority},
        )
        for status, doc in (
            ("dispatched", "Jobs sent to a worker of the class, not yet started"),
            ("running", "Jobs running on a worker of the class"),
        ):
            counts = f.dispatched if status == "dispatched" else f.running
            yield _family(
                f"renderfarm_jobs_{status}",
                doc,
                ["worker_class"],
                {(hw.value,): counts[hw] for hw in Hardware},
            )
        yield _family(
            "renderfarm_oldest_pending_job_age_seconds",
            "Seconds the oldest waiting job of the class has waited (0: none waits)",
            ["worker_class"],
            {(cls,): age for cls, age in f.oldest_pending_s.items()},
        )
        yield _family(
            "renderfarm_jobs_finished_total",
            "Jobs finished, by outcome (lost: an attempt whose worker went away; requeued)",
            ["outcome"],
            {(outcome,): f.finished(outcome) for outcome in OUTCOMES},
        )
        yield _family(
            "renderfarm_jobs_recorded",
            "Job records Redis holds (every status; deleted jobs leave)",
            [],
            {(): f.recorded},
        )
        yield _family(
            "renderfarm_jobs_deleted_total",
            "Finished jobs deleted, through the API or by retention (RENDERFARM_KEEP_JOBS_DAYS)",
            [],
            {(): f.deleted()},
        )
        yield _family(
            "renderfarm_storage_trash_entries",
            "Deleted jobs' storage folders and input images the scheduler has yet to delete "
            "(input images written in the last 10 minutes wait aside, not counted)",
            [],
            {(): f.trash},
        )
        yield _family(
            "renderfarm_dispatches_total",
            "Jobs sent to a worker, by its class",
            ["worker_class"],
            {(hw.value,): f.dispatches(hw) for hw in Hardware},
        )
        yield _family(
            "renderfarm_dispatch_affinity_total",
            "Dispatches to a worker already holding the job's model (hit) or not (miss)",
            ["result"],
            {(result,): f.affinity(result) for result in AFFINITY},
        )
        duration = HistogramMetricFamily(
            "renderfarm_job_duration_seconds",
            "An attempt's run time, start to finish, by the class it ran on",
            labels=["worker_class"],
        )
        for hw, h in f.durations.items():
            duration.add_metric([hw.value], h.cumulative, h.sum)
        yield duration
        stages = HistogramMetricFamily(
            "renderfarm_job_stage_seconds",
            "Time per stage: queue wait (per attempt), model load, render, upload (succeeded)",
            labels=["stage"],
        )
        for stage in STAGES:
            h = f.stages[stage]
            stages.add_metric([stage], h.cumulative, h.sum)
        yield stages

    def _workers(self, workers: list[dict[str, Any]]) -> Iterator[Metric]:
        states = {(hw.value, s): 0 for hw in Hardware for s in WORKER_STATES}
        per_worker: dict[str, dict[tuple, float]] = {}

        def put(metric: str, labels: tuple, value: Any) -> None:
            if isinstance(value, int | float):
                per_worker.setdefault(metric, {})[labels] = value

        off = draining(self.redis, [w["name"] for w in workers])  # one round trip
        for w in workers:
            name, hw = w["name"], w["hardware"]
            state = worker_state(w, name in off)
            states[(hw, state)] = states.get((hw, state), 0) + 1
            cache = w.get("cache", {})
            tiers = [cache, *([cache["ram"]] if isinstance(cache.get("ram"), dict) else [])]
            for tier in tiers:
                labels = (name, hw, str(tier.get("name", "ram")))
                put("renderfarm_model_cache_bytes", labels, tier.get("bytes_in_use"))
                put("renderfarm_model_cache_budget_bytes", labels, tier.get("budget_bytes"))
                put("renderfarm_model_loads_total", labels, tier.get("loads"))
                put("renderfarm_model_evictions_total", labels, tier.get("evictions"))
                put("renderfarm_model_cache_hits_total", labels, tier.get("hits"))
            put("renderfarm_worker_rss_bytes", (name, hw), w.get("process_rss"))
            if str(w.get("device", "")).startswith("cuda"):
                put("renderfarm_vram_used_bytes", (name, hw), w.get("memory_used"))
                put("renderfarm_vram_total_bytes", (name, hw), w.get("memory_total"))
        yield _family(
            "renderfarm_workers",
            "Live workers by class and state",
            ["worker_class", "state"],
            states,
        )
        docs = {
            "renderfarm_model_cache_bytes": "Bytes the worker's model cache holds, per tier",
            "renderfarm_model_cache_budget_bytes": "The worker's model cache budget, per tier",
            "renderfarm_model_loads_total": "Models the worker loaded into the tier",
            "renderfarm_model_evictions_total": "Models the worker evicted from the tier",
            "renderfarm_model_cache_hits_total": "Model lookups the tier answered warm",
            "renderfarm_worker_rss_bytes": "The worker process's resident memory",
            "renderfarm_vram_used_bytes": "GPU memory in use on the worker's GPU",
            "renderfarm_vram_total_bytes": "GPU memory of the worker's GPU",
        }
        for metric, doc in docs.items():
            cache_metric = metric.startswith("renderfarm_model_")
            labels = ["worker", "worker_class", *(["tier"] if cache_metric else [])]
            yield _family(metric, doc, labels, per_worker.get(metric, {}))


def init_metrics(app: Flask, redis: Redis) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FarmCollector(redis))
    app.extensions["renderfarm.metrics"] = registry
    app.register_blueprint(metrics)


@metrics.get("/metrics")
@require(Role.OPERATOR)
def prometheus_metrics():
    """Prometheus text format; scrape with an operator's token (`authorization` setting)."""
    registry = current_app.extensions["renderfarm.metrics"]
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


@metrics.get("/api/v1/fleet/demand")
@require(Role.OPERATOR)
def fleet_demand():
    """Per class: waiting and active jobs, live workers, and the demand KEDA scales on."""
    redis = farm.jobs().redis
    figures = read_census(redis)
    return jsonify(demand(figures, live_workers(redis), farm.settings().scale_auto_class))
