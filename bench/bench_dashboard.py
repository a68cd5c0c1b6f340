"""The queue page's data at team scale, and the live events stream under load.

    .venv/bin/python -m bench.bench_dashboard                      # 10,000 jobs, 50 accounts
    .venv/bin/python -m bench.bench_dashboard --jobs 1000 --seconds 3 --json bench.json

It starts its own redis-server, writes `--jobs` jobs from `--accounts` accounts through
JobControl.enqueue (no workers: dispatch, running and final states are record transitions,
successes carrying a render_s so ETAs have history; two fake cpu heartbeats make ETAs
known), then times, in-process through Flask's test client (server time, auth included),
GET /api/v1/jobs (first page, each filter, a deep page) and GET /api/v1/jobs/<id> of a
queued job (its position and ETA), p50/p95 against a baseline measured in the same run: a
plain ZREVRANGE + pipelined HGETALL of 50 records. Then a real dashboard process serves
`--clients` open GET /api/v1/events streams while `--rate` progress updates per second are
written for `--seconds`: delivered events per second per client and the lag from the
event's stream id (its XADD time) to its arrival.
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import requests
from redis import Redis

from bench.common import (
    api_token,
    log,
    machine_info,
    machine_line,
    parser,
    percentile,
    run_dir,
    write_json,
)
from renderfarm import localfarm
from shared import keys
from shared.client import parse_sse
from shared.config import Settings
from shared.jobspec import parse_spec
from shared.vocabulary import JobStatus, Priority

S = JobStatus
MODELS = ("demo-sd15", "sdxl-base", "flux-dev")
WORDS = ("lighthouse", "fox", "castle", "robot", "forest", "harbor", "dragon", "city")


def populate(settings: Settings, n: int, accounts: int) -> dict[str, list[str]]:
    from scheduler.control import JobControl

    jobs = JobControl(settings)
    rng = random.Random(1234)
    by_state: dict[str, list[str]] = {s: [] for s in S}
    for name in ("bench-w1", "bench-w2"):
        jobs.redis.set(keys.worker(name), json.dumps({"name": name, "hardware": "cpu"}), ex=3600)
        jobs.redis.sadd(keys.workers_index(), name)
    for i in range(n):
        owner = f"user{i % accounts:02d}"
        spec = parse_spec(
            {
                "model": MODELS[i % len(MODELS)],
                "prompt": f"a {rng.choice(WORDS)} number {i}",
                "width": 512,
                "height": 512,
                "steps": 20,
                "hardware": "gpu" if i % 5 == 0 else "auto",
                "seed": i,
            },
            settings,
        )
        rec = jobs.enqueue([spec], owner, Priority.NORMAL)[0]
        job_id = rec["id"]
        roll = rng.random()
        state = (
            S.SUCCEEDED
            if roll < 0.7
            else S.FAILED
            if roll < 0.8
            else S.CANCELED
            if roll < 0.85
            else S.RUNNING
            if roll < 0.87
            else S.PENDING
        )
        if state == S.CANCELED:
            jobs.cancel(job_id)
        elif state != S.PENDING:
            jobs.pending.remove(job_id, owner)
            now = time.time()
            r = jobs.records
            r.transition(job_id, S.DISPATCHED, (S.PENDING,), 0, attempt=1, dispatched_at=now)
            r.transition(
                job_id, S.RUNNING, (S.DISPATCHED,), 1, worker="bench-w1", ran_on="cpu",
                started_at=now, attempts=1,
            )  # fmt: skip
            if state == S.SUCCEEDED:
                r.transition(
                    job_id, S.SUCCEEDED, (S.RUNNING,), 1, finished_at=now,
                    outputs=[f"jobs/{job_id}/0.png"], render_s=f"{rng.uniform(5, 15):.3f}",
                )  # fmt: skip
            elif state == S.FAILED:
                r.transition(job_id, S.FAILED, (S.RUNNING,), 1, finished_at=now, error="boom")
        by_state[state].append(job_id)
        if i and i % 2000 == 0:
            log(f"  {i} jobs written")
    return by_state


def timed(call, repeat: int) -> dict[str, float]:
    call()  # warm
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": percentile(times, 50), "p95_ms": percentile(times, 95)}


def bench_queries(settings: Settings, token: str, by_state: dict, repeat: int) -> dict[str, Any]:
    from dashboard.app import create_app

    app = create_app(settings)
    client = app.test_client()
    auth = {"Authorization": f"Bearer {token}"}
    redis = Redis.from_url(settings.redis_url)

    def baseline() -> None:
        ids = redis.zrevrange(keys.jobs_index(), 0, 49)
        with redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(keys.job(job_id.decode()))
            pipe.execute()

    def get(path: str, **params: str):
        def call() -> None:
            resp = client.get(path, query_string=params, headers=auth)
            assert resp.status_code == 200, resp.data[:300]

        return call

    queued = by_state[S.PENDING]
    cases = {
        "first page": get("/api/v1/jobs"),
        "owner=user07": get("/api/v1/jobs", owner="user07"),
        "status=queued": get("/api/v1/jobs", status="queued"),
        "status=running": get("/api/v1/jobs", status="running"),
        "status=succeeded": get("/api/v1/jobs", status="succeeded"),
        "status=failed,canceled": get("/api/v1/jobs", status="failed,canceled"),
        "model=sdxl-base": get("/api/v1/jobs", model="sdxl-base"),
        "hardware=gpu": get("/api/v1/jobs", hardware="gpu"),
        "owner+status=queued": get("/api/v1/jobs", owner="user07", status="queued"),
        "q=lighthouse": get("/api/v1/jobs", q="lighthouse"),
        "page 20": get("/api/v1/jobs", page="20"),
        "gallery": get("/api/v1/gallery"),
        "job page (queued)": get(f"/api/v1/jobs/{queued[len(queued) // 2]}"),
        "job page (succeeded)": get(f"/api/v1/jobs/{by_state[S.SUCCEEDED][0]}"),
    }
    base = timed(baseline, repeat)
    out = {"baseline ZREVRANGE+HGETALL x50": base}
    for name, call in cases.items():
        fig = timed(call, repeat)
        fig["ratio"] = fig["p50_ms"] / base["p50_ms"]
        out[name] = fig
        log(f"  {name}: p50 {fig['p50_ms']:.1f} ms")
    return out


def bench_stream(settings: Settings, env: dict, token: str, running: list[str], args) -> dict:
    from scheduler.records import JobRecords

    port = localfarm.free_port()
    proc = localfarm.start_dashboard("127.0.0.1", port, env, log=args.tmp / "dashboard.log")
    url = f"http://127.0.0.1:{port}"
    records = JobRecords(Redis.from_url(settings.redis_url))
    counts = [0] * args.clients
    lags: list[float] = []
    stop = threading.Event()
    ready = threading.Barrier(args.clients + 1)
    lock = threading.Lock()

    def listen(n: int) -> None:
        resp = requests.get(
            url + "/api/v1/events",
            headers={"Authorization": f"Bearer {token}"},
            stream=True,
            timeout=30,
        )
        lines = resp.iter_lines(decode_unicode=True)
        next(lines)  # retry: the stream is open
        ready.wait()
        mine = []
        for event in parse_sse(lines):
            mine.append(time.time() * 1000 - int(event["id"].split("-")[0]))
            counts[n] += 1
            if stop.is_set():
                break
        resp.close()
        with lock:
            lags.extend(mine)

    threads = [threading.Thread(target=listen, args=(n,), daemon=True) for n in range(args.clients)]
    for t in threads:
        t.start()
    ready.wait(timeout=60)
    start = time.monotonic()
    sent = 0
    interval = 1 / args.rate
    while (elapsed := time.monotonic() - start) < args.seconds:
        job = running[sent % len(running)]
        records.set_progress(job, 1, (sent % 100) / 100)
        sent += 1
        time.sleep(max(0.0, start + sent * interval - time.monotonic()))
    time.sleep(1)  # let the last events arrive
    stop.set()
    # One more event wakes every listener so it sees `stop`.
    records.set_progress(running[0], 1, 0.5)
    for t in threads:
        t.join(timeout=10)
    localfarm.stop(proc)
    rates = [c / elapsed for c in counts]
    return {
        "clients": args.clients,
        "updates_sent": sent,
        "sent_per_s": sent / elapsed,
        "delivered_per_s_per_client_min": min(rates),
        "delivered_per_s_per_client_mean": sum(rates) / len(rates),
        "lag_p50_ms": percentile(lags, 50) if lags else None,
        "lag_p95_ms": percentile(lags, 95) if lags else None,
    }


def main() -> int:
    p = parser("python -m bench.bench_dashboard", __doc__)
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--accounts", type=int, default=50)
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--rate", type=float, default=100)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--json", type=Path)
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    machine = machine_info()
    with run_dir("renderfarm-bench-dash-", args.keep, "redis data, dashboard log") as tmp:
        args.tmp = tmp
        port = localfarm.free_port()
        redis_proc = localfarm.start_redis(port, tmp / "redis")
        try:
            redis_url = f"redis://127.0.0.1:{port}/0"
            env = {"RENDERFARM_REDIS_URL": redis_url, "RENDERFARM_STORAGE_URL": f"file://{tmp}"}
            settings = Settings(redis_url=redis_url, storage_url=f"file://{tmp}")
            log(f"writing {args.jobs} jobs from {args.accounts} accounts")
            t0 = time.perf_counter()
            by_state = populate(settings, args.jobs, args.accounts)
            write_s = time.perf_counter() - t0
            token = api_token(redis_url)
            log("timing the queue page's data")
            queries = bench_queries(settings, token, by_state, args.repeat)
            log(f"{args.clients} SSE clients, {args.rate:g} updates/s for {args.seconds:g} s")
            stream = bench_stream(settings, env, token, by_state[S.RUNNING], args)
        finally:
            localfarm.stop(redis_proc)
    print(machine_line(machine))
    counts = ", ".join(f"{s} {len(v)}" for s, v in by_state.items())
    print(f"{args.jobs} jobs from {args.accounts} accounts ({counts}), written in {write_s:.1f} s")
    print(f"\n{'server time (test client)':<36} {'p50 ms':>8} {'p95 ms':>8} {'x baseline':>10}")
    for name, fig in queries.items():
        ratio = f"{fig['ratio']:.1f}" if "ratio" in fig else "1.0"
        print(f"{name:<36} {fig['p50_ms']:>8.2f} {fig['p95_ms']:>8.2f} {ratio:>10}")
    print(
        f"\nevents stream: {stream['clients']} clients, {stream['sent_per_s']:.0f} updates/s sent; "
        f"delivered per client {stream['delivered_per_s_per_client_mean']:.0f}/s "
        f"(min {stream['delivered_per_s_per_client_min']:.0f}/s); lag p50 "
        f"{stream['lag_p50_ms']:.1f} ms, p95 {stream['lag_p95_ms']:.1f} ms"
    )
    write_json(
        args.json,
        {
            "machine": machine,
            "config": {k: v for k, v in vars(args).items() if k != "tmp"}
            | {"json": str(args.json)},
            "queries": queries,
            "stream": stream,
            "write_s": write_s,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
