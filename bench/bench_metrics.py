"""What a Prometheus scrape costs as the queue grows: `GET /metrics` at 1k, 10k, 100k jobs waiting.

    .venv/bin/python -m bench.bench_metrics [--sizes 1000,10000,100000] [--scrapes 50] [--json PATH]

A redis-server on a free loopback port and the dashboard's app in this process (Flask's test
client, so only the handler and Redis are measured). For each size, that many jobs are
recorded as a farm would (`JobRecords.create`: spread over 100 owners, every class and
priority), 20 simulated worker heartbeats are written, and `GET /metrics` is called
--scrapes times as an operator. Printed: the scrape's p50/p95, the Redis commands one scrape
sends (INFO commandstats) and the ratio of each size's p50 to the smallest size's, measured in
the same run: a scrape that scanned the records would grow with the queue.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

from bench.common import (
    config,
    log,
    machine_info,
    machine_line,
    parser,
    percentile,
    run_dir,
    write_json,
)
from renderfarm import localfarm


def fill(redis_url: str, models_dir: Path, n: int, start: int) -> None:
    """Record jobs start..n-1 (pending), in pipelined batches."""
    from redis import Redis

    from scheduler.records import JobRecords
    from shared.config import Settings
    from shared.jobspec import parse_spec
    from shared.vocabulary import AUTO, Hardware, Priority

    settings = Settings(redis_url=redis_url, models_dir=models_dir)
    records = JobRecords(Redis.from_url(redis_url))
    classes = [*Hardware, AUTO]
    specs = {
        cls: parse_spec(
            {"model": "demo-sd15", "prompt": "p", "width": 64, "height": 64, "hardware": cls},
            settings,
        ).with_seed()
        for cls in classes
    }
    for i in range(start, n):
        cls = classes[i % len(classes)]
        records.create(f"job-{i}", specs[cls], f"owner-{i % 100}", list(Priority)[i % 3])


def heartbeats(redis_url: str, count: int) -> None:
    from redis import Redis

    from shared import keys

    redis = Redis.from_url(redis_url)
    for i in range(count):
        name = f"sim-{i}"
        beat = {
            "name": name,
            "hardware": ["cpu", "openvino", "gpu"][i % 3],
            "device": "cpu",
            "process_rss": 2**30,
            "cache": {"name": "ram", "bytes_in_use": 2**29, "budget_bytes": 2**33, "loads": 3},
            "current_job": None,
            "stalled_job": None,
        }
        redis.set(keys.worker(name), json.dumps(beat), ex=3600)
        redis.sadd(keys.workers_index(), name)


def main(argv: list[str] | None = None) -> int:
    p = parser("python -m bench.bench_metrics", __doc__)
    p.add_argument("--sizes", default="1000,10000,100000", help="queue lengths (1000,10000,100000)")
    p.add_argument("--scrapes", type=int, default=50, help="scrapes per size (50)")
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = p.parse_args(argv)
    sizes = sorted(int(x) for x in args.sizes.split(","))
    from redis import Redis

    from bench.common import api_token
    from dashboard.app import create_app
    from shared.config import Settings
    from worker.demo_models import write_demo_models

    with run_dir("renderfarm-bench-metrics-", False) as tmp:
        port = localfarm.free_port()
        proc = localfarm.start_redis(port, tmp / "redis")
        try:
            url = f"redis://127.0.0.1:{port}/0"
            write_demo_models(tmp / "models")
            app = create_app(
                Settings(redis_url=url, models_dir=tmp / "models", storage_url=f"file://{tmp}")
            )
            client = app.test_client()
            headers = {"Authorization": f"Bearer {api_token(url, 'bench-metrics')}"}
            heartbeats(url, 20)
            redis = Redis.from_url(url)
            rows, done = [], 0
            for n in sizes:
                log(f"recording jobs up to {n}")
                fill(url, tmp / "models", n, done)
                done = n
                for _ in range(5):
                    assert client.get("/metrics", headers=headers).status_code == 200
                redis.config_resetstat()
                times = []
                for _ in range(args.scrapes):
                    began = time.perf_counter()
                    resp = client.get("/metrics", headers=headers)
                    times.append(time.perf_counter() - began)
                    assert resp.status_code == 200
                stats = redis.info("commandstats")
                commands = sum(v["calls"] for k, v in stats.items() if "config" not in k)
                rows.append(
                    {
                        "pending": n,
                        "p50_ms": statistics.median(times) * 1000,
                        "p95_ms": percentile(times, 95) * 1000,
                        "redis_commands_per_scrape": commands / args.scrapes,
                    }
                )
        finally:
            localfarm.stop(proc)
    base = rows[0]["p50_ms"]
    lines = [
        "GET /metrics as the queue grows (bench/bench_metrics.py)",
        machine_line(machine_info()),
        f"load average {os.getloadavg()[0]:.2f}; {args.scrapes} scrapes per size, 20 workers",
        "",
        f"{'pending jobs':>12} {'p50 ms':>8} {'p95 ms':>8} {'Redis cmds/scrape':>18} "
        f"{'p50 / smallest':>15}",
    ]
    for r in rows:
        lines.append(
            f"{r['pending']:>12,} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f} "
            f"{r['redis_commands_per_scrape']:>18.1f} {r['p50_ms'] / base:>14.2f}x"
        )
    print("\n".join(lines), flush=True)
    write_json(args.json, {"machine": machine_info(), "config": config(args), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
