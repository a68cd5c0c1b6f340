"""What a finished job holds in Redis, what deleting it costs, and what deleting gives back.

    .venv/bin/python -m bench.bench_retention [--jobs 2000] [--json PATH]

A redis-server on a free loopback port and `JobControl` in this process, file storage in a
temp folder. --jobs txt2img jobs (512x512, a 60-character prompt, 10 owners) are submitted,
taken through dispatch and a run to success as the dispatcher and a worker would (an output
and a manifest written), and then deleted one by one (`JobControl.delete`), the retention
step emptying the trash after them. Printed: Redis `used_memory` per finished job (the
events stream trimmed, so only what stays), the same after every job was deleted (what
deleting gives back: the baseline is the same Redis before the first job; what remains is
the farm-wide counters and histograms, and the allocator's), and the time per deletion
against the time per submission measured in the same run.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from bench.common import config, log, machine_info, machine_line, parser, run_dir, write_json
from renderfarm import localfarm

SPEC = {
    "model": "demo-sd15",
    "prompt": "a lighthouse at dusk, oil painting, dramatic sky, waves",
    "negative_prompt": "blurry",
    "width": 512,
    "height": 512,
    "steps": 20,
}


def finish(control, job_id: str, owner: str) -> None:
    """Dispatch, run and succeed the job as the dispatcher and a worker would."""
    from shared.vocabulary import JobStatus as S

    records, worker = control.records, "cpu-1234@host"
    control.pending.remove(job_id, owner)
    records.transition(job_id, S.DISPATCHED, (S.PENDING,), attempt=1, target=worker)
    records.transition(job_id, S.RUNNING, (S.DISPATCHED,), 1, worker=worker, ran_on="cpu",
                       started_at=time.time())  # fmt: skip
    output, manifest = f"jobs/{job_id}/1/image-0.png", f"jobs/{job_id}/1/manifest.json"
    for key in (output, manifest):
        control.storage.put(key, b"x" * 512, "application/octet-stream")
    records.transition(job_id, S.SUCCEEDED, (S.RUNNING,), 1, outputs=[output],
                       manifest=manifest, finished_at=time.time(), render_s=3.2)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = parser("python -m bench.bench_retention", __doc__)
    p.add_argument("--jobs", type=int, default=2000, help="jobs submitted, finished, deleted")
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = p.parse_args(argv)
    from scheduler.control import JobControl
    from scheduler.retention import Retention
    from shared import keys
    from shared.config import Settings
    from shared.jobspec import parse_spec
    from worker.demo_models import write_demo_models

    with run_dir("renderfarm-bench-retention-", False) as tmp:
        port = localfarm.free_port()
        proc = localfarm.start_redis(port, tmp / "redis")
        try:
            write_demo_models(tmp / "models")
            settings = Settings(
                redis_url=f"redis://127.0.0.1:{port}/0",
                models_dir=tmp / "models",
                storage_url=f"file://{tmp / 'outputs'}",
            )
            control = JobControl(settings)
            redis = control.redis

            def memory() -> int:
                redis.xtrim(keys.events(), maxlen=0)  # the capped history, not what stays
                redis.delete(keys.wake())  # the dispatcher's wake-ups (no dispatcher here)
                return int(redis.info("memory")["used_memory"])

            spec = parse_spec(SPEC, settings)
            control.submit(spec, "warm-up")  # scripts loaded, connection made
            redis.flushdb()
            baseline = memory()
            log(f"submitting and finishing {args.jobs} jobs")
            made, submit_s = [], 0.0
            for i in range(args.jobs):
                owner = f"owner-{i % 10}"
                began = time.perf_counter()
                record, _ = control.submit(spec, owner)
                submit_s += time.perf_counter() - began
                finish(control, record["id"], owner)
                made.append(record["id"])
            held = memory()
            log(f"deleting {args.jobs} jobs")
            began = time.perf_counter()
            for job_id in made:
                control.delete(job_id)
            delete_s = time.perf_counter() - began
            retention = Retention(redis, control.storage, settings)
            while redis.llen(keys.trash()):
                retention.empty_trash()
            left = memory()
            files_left = sum(1 for f in (tmp / "outputs").rglob("*") if f.is_file())
        finally:
            localfarm.stop(proc)
    n = args.jobs
    figures = {
        "jobs": n,
        "bytes_per_finished_job": (held - baseline) / n,
        "bytes_per_job_after_delete": (left - baseline) / n,
        "submit_ms": submit_s / n * 1000,
        "delete_ms": delete_s / n * 1000,
        "files_left": files_left,
    }
    print(
        "\n".join(
            [
                "Finished jobs in Redis, and deleting them (bench/bench_retention.py)",
                machine_line(machine_info()),
                f"load average {os.getloadavg()[0]:.2f}; {n} jobs, 512x512 txt2img specs",
                "",
                f"Redis per finished job:        {figures['bytes_per_finished_job']:8.0f} bytes",
                f"  after all were deleted:      {figures['bytes_per_job_after_delete']:8.0f} "
                f"bytes ({(left - baseline) / (held - baseline):.1%} of it; baseline: the "
                "same Redis before the first job)",
                f"delete per job:                {figures['delete_ms']:8.3f} ms "
                f"({figures['delete_ms'] / figures['submit_ms']:.2f}x a submission's "
                f"{figures['submit_ms']:.3f} ms, same run)",
                f"storage files left:            {files_left:8d}",
            ]
        ),
        flush=True,
    )
    write_json(args.json, {"machine": machine_info(), "config": config(args), **figures})
    return 0


if __name__ == "__main__":
    sys.exit(main())
