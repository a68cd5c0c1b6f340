"""Dispatcher benchmark: the real dispatcher at scale, against simulated workers.

    .venv/bin/python -m bench.bench_dispatch [--workers 10,100,1000]
        [--pending 1000,10000,100000] [--seconds 10] [--variants new,main] [--json PATH]
    .venv/bin/python -m bench.bench_dispatch --quick      # a small run, drained and checked

For each fleet size (--workers) and backlog (--pending) and each variant, on an emptied
Redis database (its own redis-server on a free port, `renderfarm.localfarm.start_redis`,
or --redis-url):
1. The backlog: --pending jobs from --owners owners (txt2img specs parsed with
   `shared.jobspec.parse_spec`, models drawn Zipf-like from --models checkpoints; 10%
   high, 70% normal, 20% low priority; 80% `hardware: auto`, 15% cpu, 5% gpu), written in
   pipelines with `JobRecords.create_in` (what a submission writes: the record and its
   place in the owner's queue, without the model-store check). Every tenth owner has a
   running limit of 2 (`publish_running_limit`), another tenth may use the cpu class only. Redis's
   `used_memory` before and after, over the jobs: memory per pending job.
2. The fleet: `bench.dispatch_sim` in a process of its own: --workers simulated workers
   (a quarter GPU, the rest CPU; every model in every store, --cache-models held at a
   time) that beat like real ones and consume their Celery queues, taking each job
   dispatched → running → (after --job-s, default workers/2000 s: the fleet could take
   2,000 jobs/s) succeeded as a worker does to the record.
3. The dispatcher in a process of its own: `Dispatcher.run_forever` (the lock, the reaper,
   the passes, woken by `keys.wake()`), the variant's class: `new`, the farm's
   `scheduler.dispatcher.Dispatcher`; `main`, `bench.dispatch_baseline.MainDispatcher`
   (main's fleet read, rounds and reaper, for the ratios). Every Redis command and socket
   write (≈ a round trip) it sends is counted in the process (redis-py's serialiser,
   Celery's publishes included), each pass timed. --profile: cProfile it (and the
   simulator), the .prof files kept with --keep.
4. After --warmup seconds (the first burst onto an idle fleet), --seconds of steady state:
   the backlog is topped up to --pending every 0.2 s (each dispatched job replaced by a new
   submission), so the queue length is what is measured against. Figures over that window:
   dispatches per second (the census's dispatch counters); pass time p50/p99 and jobs per
   pass; per job, the time from its worker becoming free to the job's dispatch ("free →
   sent": the dispatcher's latency as the fleet feels it) and from eligible to dispatched
   (its wait in the backlog); the dispatcher's CPU time, commands and round trips per
   dispatch; every Redis command executed (INFO commandstats: the simulated workers' and
   the Lua steps' own calls included) per dispatch.
The CPU time of the dispatcher, the simulator, redis-server and the whole machine over the
window is printed too: on a small shared machine, other work takes its share.
--quick: 8 workers, 400 jobs from 20 owners (every job `hardware: auto`, affinity wait 0,
so the order can be checked), no top-up, run until every job succeeded, then checked:
each job dispatched once and succeeded (one attempt, one delivery). The smoke test
(tests/test_bench_dispatch.py) checks the order, the limits and the classes too.

Everything it starts (redis-server, the two processes, a temp dir) is stopped or removed
on exit, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    config,
    loadavg,
    log,
    machine_info,
    machine_line,
    parser,
    percentile,
    redis_server_version,
    run_dir,
    sigint_ignored,
    tail,
    write_json,
)

REPO = Path(__file__).resolve().parents[1]
LIMITED_RUNNING = 2  # the running limit of every tenth owner


@dataclass(frozen=True)
class Scenario:
    workers: int
    pending: int
    owners: int
    seconds: float
    warmup: float
    job_s: float
    drain: bool  # run until every job succeeded (no top-up), then check
    affinity_wait_s: float
    heartbeat_s: float
    lease_s: float
    models: int
    cache_models: int
    gpu_share: float
    seed: int


def owner_names(count: int) -> list[str]:
    return [f"owner{i:03d}" for i in range(count)]


def limited(owner: str) -> bool:
    return int(owner[5:]) % 10 == 3


def cpu_only(owner: str) -> bool:
    return int(owner[5:]) % 10 == 7


# ---------------------------------------------------------------------------- the backlog


class Backlog:
    """Writes pending jobs as submissions do: records, pending sets, running limits."""

    def __init__(self, redis, scenario: Scenario, models_dir: Path) -> None:
        from scheduler.quotas import publish_running_limit
        from scheduler.records import JobRecords
        from shared.config import Settings
        from shared.jobspec import parse_spec
        from shared.vocabulary import Hardware, Priority

        self.redis = redis
        self.records = JobRecords(redis)
        self.rng = random.Random(scenario.seed)
        self.owners = owner_names(scenario.owners)
        settings = Settings(models_dir=models_dir)
        self.models = [f"bench-m{i}" for i in range(scenario.models)]
        self.weights = [1 / (i + 1) for i in range(scenario.models)]  # Zipf, s = 1
        self.specs = {
            (m, hw): parse_spec(
                {"model": m, "prompt": "bench", "width": 64, "height": 64, "steps": 2,
                 "hardware": hw, "seed": 1},
                settings,
            )
            for m in self.models
            for hw in ("auto", "cpu", "gpu")
        }  # fmt: skip
        self.priorities = [Priority.HIGH, Priority.NORMAL, Priority.LOW]
        # What jobs ask for: auto, cpu, gpu (a drained run: auto only, so its order checks).
        self.hardware_mix = (1, 0, 0) if scenario.drain else (80, 15, 5)
        self.all_classes = tuple(Hardware)
        for owner in self.owners:
            if limited(owner):
                publish_running_limit(redis, owner, LIMITED_RUNNING)

    def add(self, count: int) -> None:
        from shared.vocabulary import Hardware

        rng = self.rng
        with self.redis.pipeline(transaction=False) as pipe:
            for i in range(count):
                owner = rng.choice(self.owners)
                priority = rng.choices(self.priorities, (10, 70, 20))[0]
                model = rng.choices(self.models, self.weights)[0]
                hw = rng.choices(("auto", "cpu", "gpu"), self.hardware_mix)[0]
                allowed = self.all_classes
                if cpu_only(owner):
                    hw, allowed = ("cpu" if hw == "gpu" else hw), (Hardware.CPU,)
                job_id = uuid.uuid4().hex
                self.records.create_in(
                    pipe,
                    job_id,
                    self.specs[(model, hw)],
                    owner,
                    priority,
                    hardware=allowed,
                    wake=False,
                )
                if i % 500 == 499:
                    pipe.execute()
            pipe.execute()
        from shared import keys

        self.redis.lpush(keys.wake(), 1)

    def waiting(self) -> int:
        """Pending jobs, from the census (a fixed number of ZCARDs)."""
        from scheduler.census import ASKED
        from shared import keys
        from shared.vocabulary import JobStatus, Priority

        with self.redis.pipeline(transaction=False) as pipe:
            for cls in ASKED:
                for p in Priority:
                    pipe.zcard(keys.census(JobStatus.PENDING, cls, p))
            return sum(pipe.execute())


# ---------------------------------------------------------------------------- the processes


def _counters() -> Any:
    """Count the Redis commands and writes (≈ round trips) this process sends."""
    from redis import connection

    class Counts:
        commands = 0
        round_trips = 0

    counts = Counts()
    for cls in (connection.PythonRespSerializer, connection.HiredisRespSerializer):
        pack = cls.pack

        def counted(self, *args, _pack=pack):
            counts.commands += 1
            return _pack(self, *args)

        cls.pack = counted
    send = connection.AbstractConnection.send_packed_command

    def sent(self, command, check_health=True):
        counts.round_trips += 1
        return send(self, command, check_health)

    connection.AbstractConnection.send_packed_command = sent
    return counts


def run_dispatcher(args: dict[str, Any]) -> None:
    """The `--role dispatcher` process: the variant's dispatcher, run as the farm runs it,
    each pass timed; the figures written to args["out"] on SIGTERM."""
    import logging

    from shared.config import Settings

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    counts = _counters()
    if args["variant"] == "main":
        from bench.dispatch_baseline import MainDispatcher as cls
    else:
        from scheduler.dispatcher import Dispatcher as cls
    dispatcher = cls(Settings())
    passes: list[tuple[float, float, int, int, int]] = []
    reaps: list[float] = []
    dispatch, reap = dispatcher.dispatch, dispatcher.reap

    def timed_dispatch() -> int:
        at, t0 = time.time(), time.perf_counter()
        sent = dispatch()
        passes.append((at, time.perf_counter() - t0, sent, counts.commands, counts.round_trips))
        return sent

    def timed_reap() -> int:
        t0 = time.perf_counter()
        handled = reap()
        reaps.append(time.perf_counter() - t0)
        return handled

    dispatcher.dispatch, dispatcher.reap = timed_dispatch, timed_reap
    samples: list[tuple[float, int, int]] = []  # what it sent so far, every 0.1 s

    def sample() -> None:
        while True:
            samples.append((time.time(), counts.commands, counts.round_trips))
            time.sleep(0.1)

    threading.Thread(target=sample, name="counts", daemon=True).start()

    def stop(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    profile = None
    if args.get("profile"):
        import cProfile

        profile = cProfile.Profile()
        profile.enable()
    try:
        dispatcher.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if profile is not None:
            profile.disable()
            profile.dump_stats(args["profile"])
        found = {"passes": passes, "reaps": reaps, "sent": samples}
        Path(args["out"]).write_text(json.dumps(found))


def _start(role: str, args: dict[str, Any], logs: Path, env: dict[str, str]) -> subprocess.Popen:
    path = logs.with_suffix(".args.json")
    path.write_text(json.dumps(args))
    logf = logs.open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "bench.bench_dispatch", "--role", role, "--role-args", str(path)],
        cwd=REPO,
        env=env,
        stdout=logf,
        stderr=subprocess.STDOUT,
    )


def _stop(proc: subprocess.Popen | None, timeout: float = 20) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------- one run


def _commandstats(redis) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in redis.info("commandstats").items()}


def _dispatches(redis) -> int:
    from shared import keys

    counters = redis.hgetall(keys.counters())
    return sum(int(v) for k, v in counters.items() if k.startswith(b"dispatches:"))


def _succeeded(redis) -> int:
    from shared import keys

    return int(redis.hget(keys.counters(), "finished:succeeded") or 0)


def _quantiles(values: list[float], scale: float = 1.0) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "n": 0}
    return {
        "p50": percentile(values, 50) * scale,
        "p99": percentile(values, 99) * scale,
        "n": len(values),
    }


def run_one(
    scenario: Scenario,
    variant: str,
    redis_url: str,
    tmp: Path,
    models_dir: Path,
    profile: bool = False,
) -> dict[str, Any]:
    import psutil
    from redis import Redis

    redis = Redis.from_url(redis_url)
    redis.flushdb()
    memory_before = redis.info("memory")["used_memory"]
    backlog = Backlog(redis, scenario, models_dir)
    t0 = time.perf_counter()
    backlog.add(scenario.pending)
    setup_s = time.perf_counter() - t0
    memory_after = redis.info("memory")["used_memory"]

    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "RENDERFARM_REDIS_URL": redis_url,
        "RENDERFARM_HEARTBEAT_S": str(scenario.heartbeat_s),
        "RENDERFARM_LEASE_S": str(scenario.lease_s),
        "RENDERFARM_AFFINITY_WAIT_S": str(scenario.affinity_wait_s),
        "RENDERFARM_MODELS_DIR": str(models_dir),
    }
    tag = f"{variant}-{scenario.workers}-{scenario.pending}"
    sim_out, disp_out, ready = (tmp / f"{tag}.{n}.json" for n in ("sim", "disp", "ready"))
    sim_args = {
        "redis_url": redis_url,
        "workers": scenario.workers,
        "gpu_share": scenario.gpu_share,
        "models": backlog.models,
        "cache_models": scenario.cache_models,
        "job_s": scenario.job_s,
        "heartbeat_s": scenario.heartbeat_s,
        "out": str(sim_out),
        "ready": str(ready),
        "profile": str(tmp / f"{tag}.workers.prof") if profile else "",
    }
    sim = disp = None
    refill_stop = threading.Event()
    try:
        sim_log, disp_log = tmp / f"{tag}.workers.log", tmp / f"{tag}.dispatcher.log"
        sim = _start("workers", sim_args, sim_log, env)
        deadline = time.monotonic() + 120
        while not ready.exists():
            if sim.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"simulated workers did not start:\n{tail(sim_log)}")
            time.sleep(0.05)
        disp_args = {"variant": variant, "out": str(disp_out), "profile": ""}
        if profile:
            disp_args["profile"] = str(tmp / f"{tag}.dispatcher.prof")
        disp = _start("dispatcher", disp_args, disp_log, env)
        procs = {
            "dispatcher": psutil.Process(disp.pid),
            "workers": psutil.Process(sim.pid),
            "redis": psutil.Process(redis.info("server")["process_id"]),
        }

        def snapshot() -> dict[str, Any]:
            cpu = {}
            for role, proc in procs.items():
                t = proc.cpu_times()
                cpu[role] = t.user + t.system
            m = psutil.cpu_times()
            cpu["machine"] = (
                m.user + m.nice + m.system + getattr(m, "irq", 0) + getattr(m, "softirq", 0)
            )
            return {
                "at": time.time(),
                "dispatches": _dispatches(redis),
                "commands": _commandstats(redis),
                "cpu": cpu,
            }

        def refill() -> None:
            top_up = Backlog(Redis.from_url(redis_url), scenario, models_dir)
            top_up.rng.seed(scenario.seed + 1)
            while not refill_stop.wait(0.2):
                missing = scenario.pending - top_up.waiting()
                if missing > 0:
                    top_up.add(missing)

        refiller = None
        if not scenario.drain:
            refiller = threading.Thread(target=refill, name="refill", daemon=True)
            refiller.start()
        if scenario.drain:
            a = snapshot()
            deadline = time.monotonic() + max(120, scenario.pending * scenario.job_s * 4)
            while _succeeded(redis) < scenario.pending:
                if disp.poll() is not None or sim.poll() is not None:
                    raise RuntimeError(
                        f"a benchmark process ended early:\n{tail(disp_log)}\n{tail(sim_log)}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {_succeeded(redis)} of {scenario.pending} done")
                time.sleep(0.05)
        else:
            time.sleep(scenario.warmup)
            a = snapshot()
            time.sleep(scenario.seconds)
        b = snapshot()
        if disp.poll() is not None or sim.poll() is not None:
            raise RuntimeError(
                f"a benchmark process ended early:\n{tail(disp_log)}\n{tail(sim_log)}"
            )
        refill_stop.set()
        if refiller is not None:
            refiller.join()
        waiting_at_end = backlog.waiting()
    finally:
        refill_stop.set()
        with sigint_ignored():
            _stop(disp)
            _stop(sim)
    disp_stats = json.loads(disp_out.read_text()) if disp_out.exists() else {"passes": []}
    sim_stats = json.loads(sim_out.read_text()) if sim_out.exists() else {"deliveries": []}

    elapsed = b["at"] - a["at"]
    dispatched = b["dispatches"] - a["dispatches"]
    before_cmds, after_cmds = a["commands"], b["commands"]
    commands = sum(after_cmds.values()) - sum(before_cmds.get(k, 0) for k in after_cmds)
    top_commands = sorted(
        ((k, v - before_cmds.get(k, 0)) for k, v in after_cmds.items() if k != "info"),
        key=lambda kv: -kv[1],
    )[:8]
    cpu = {role: b["cpu"][role] - a["cpu"][role] for role in b["cpu"]}
    # Passes that ended in the window.
    in_window = [p for p in disp_stats["passes"] if a["at"] <= p[0] + p[1] <= b["at"]]
    busy_passes = [p for p in in_window if p[2]]
    sent_by_passes = sum(p[2] for p in in_window)

    def sent_by(t: float) -> tuple[int, int]:
        """What the dispatcher process had sent (commands, writes) by `t`."""
        found = [x for x in disp_stats.get("sent", []) if x[0] <= t]
        return (found[-1][1], found[-1][2]) if found else (0, 0)

    cmd0, cmd1 = sent_by(a["at"]), sent_by(b["at"])
    deliveries = [
        d for d in sim_stats["deliveries"] if d[4] is not None and a["at"] <= d[4] <= b["at"]
    ]
    free_to_sent = [d[4] - d[6] for d in deliveries if d[6] is not None and d[4] >= d[6]]
    waits = [d[4] - d[3] for d in deliveries if d[3] is not None]
    transit = [d[5] - d[4] for d in deliveries]
    per = max(dispatched, 1)
    result = {
        "variant": variant,
        "workers": scenario.workers,
        "pending": scenario.pending,
        "window_s": round(elapsed, 3),
        "dispatches": dispatched,
        "dispatches_per_s": dispatched / elapsed if elapsed else 0.0,
        "pass_ms": _quantiles([p[1] for p in in_window], 1000),
        "pass_ms_sending": _quantiles([p[1] for p in busy_passes], 1000),
        "passes": len(in_window),
        "jobs_per_pass": sent_by_passes / len(busy_passes) if busy_passes else 0.0,
        "longest_pass_ms": max((p[1] for p in disp_stats["passes"]), default=0.0) * 1000,
        "passes_total": len(disp_stats["passes"]),
        "free_to_sent_ms": _quantiles(free_to_sent, 1000),
        "eligible_to_sent_s": _quantiles(waits),
        "sent_to_popped_ms": _quantiles(transit, 1000),
        "dispatcher_cpu_us_per_dispatch": cpu["dispatcher"] / per * 1e6,
        "cpu_cores": {role: round(c / elapsed, 2) for role, c in cpu.items()} if elapsed else {},
        "dispatcher_commands_per_dispatch": (cmd1[0] - cmd0[0]) / per,
        "dispatcher_round_trips_per_dispatch": (cmd1[1] - cmd0[1]) / per,
        "redis_commands_per_dispatch": commands / per,
        "redis_top_commands_per_dispatch": {k: round(v / per, 2) for k, v in top_commands},
        "redis_bytes_per_pending_job": (memory_after - memory_before) / scenario.pending,
        "reap_ms": _quantiles(disp_stats.get("reaps", []), 1000),
        "setup_s": round(setup_s, 2),
        "waiting_at_end": waiting_at_end,
        "stale_deliveries": sim_stats.get("stale", 0),
        "simulator_errors": sim_stats.get("errors", []),
    }
    if result["simulator_errors"]:
        log(f"  simulated workers failed: {result['simulator_errors'][:3]}")
    if scenario.drain:
        result["check"] = check_drained(redis, scenario, sim_stats)
    return result


def check_drained(redis, scenario: Scenario, sim_stats: dict[str, Any]) -> dict[str, Any]:
    """Every job succeeded after exactly one attempt, its task delivered once."""
    from collections import Counter

    from scheduler.records import JobRecords
    from shared import keys

    ids = [i.decode() for i in redis.zrange(keys.jobs_index(), 0, -1)]
    records = JobRecords(redis).get_many(ids)
    delivered = Counter(d[0] for d in sim_stats["deliveries"])
    return {
        "jobs": len(ids),
        "succeeded": sum(r["status"] == "succeeded" for r in records),
        "one_attempt": sum(r["attempt"] == 1 and len(r["history"]) == 1 for r in records),
        "delivered_once": sum(delivered[i] == 1 for i in ids),
        "stale_deliveries": sim_stats.get("stale", 0),
    }


# ---------------------------------------------------------------------------- the report


def _ms(q: dict[str, Any]) -> str:
    if q.get("p50") is None:
        return "-"
    return f"{q['p50']:.1f}/{q['p99']:.1f}"


def report(results: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    print("\ndispatch benchmark: the real dispatcher, simulated workers (bench/dispatch_sim.py)")
    print(meta["machine_line"] + f", load average {meta['loadavg_start']} → {meta['loadavg_end']}")
    print(f"redis     {meta['redis']}; window {meta['window']}")
    head = (
        f"{'workers':>7} {'pending':>7} {'variant':<5} {'disp/s':>8} {'pass ms':>13} "
        f"{'jobs/pass':>9} {'free→sent ms':>14} {'wait s':>9} {'cpu µs':>7} "
        f"{'cmds':>6} {'RTT':>5} {'redis':>6} {'B/job':>6}"
    )
    print("\n" + head)
    print(f"{'':>7} {'':>7} {'':<5} {'':>8} {'p50/p99':>13} {'':>9} {'p50/p99':>14} "
          f"{'p50':>9} {'/disp':>7} {'/disp':>6} {'/disp':>5} {'/disp':>6} {'':>6}")  # fmt: skip
    for r in results:
        wait = r["eligible_to_sent_s"]["p50"]
        pass_ms, jobs_per_pass = _ms(r["pass_ms"]), f"{r['jobs_per_pass']:.1f}"
        if not r["pass_ms"]["n"]:  # none ended in the window: each lasts longer
            pass_ms, jobs_per_pass = f"> {r['window_s']:.0f} s", "-"
        print(
            f"{r['workers']:>7} {r['pending']:>7} {r['variant']:<5} "
            f"{r['dispatches_per_s']:>8.0f} {pass_ms:>13} {jobs_per_pass:>9} "
            f"{_ms(r['free_to_sent_ms']):>14} {('-' if wait is None else f'{wait:.2f}'):>9} "
            f"{r['dispatcher_cpu_us_per_dispatch']:>7.0f} "
            f"{r['dispatcher_commands_per_dispatch']:>6.1f} "
            f"{r['dispatcher_round_trips_per_dispatch']:>5.2f} "
            f"{r['redis_commands_per_dispatch']:>6.1f} {r['redis_bytes_per_pending_job']:>6.0f}"
        )
    print(
        "\nCPU in the window, cores busy: the dispatcher, the simulated workers, redis-server, "
        "and the whole machine (other work included); Redis commands per dispatch, the most "
        "called:"
    )
    for r in results:
        c = r["cpu_cores"]
        top = ", ".join(f"{k} {v:g}" for k, v in r["redis_top_commands_per_dispatch"].items())
        print(
            f"{r['workers']:>7} {r['pending']:>7} {r['variant']:<5} dispatcher "
            f"{c.get('dispatcher', 0):.2f}, workers {c.get('workers', 0):.2f}, redis "
            f"{c.get('redis', 0):.2f}, machine {c.get('machine', 0):.2f}; {top}"
        )
    by = {(r["workers"], r["pending"], r["variant"]): r for r in results}
    ratios = []
    for (w, n, v), r in by.items():
        base = by.get((w, n, "main"))
        if v == "new" and base and base["dispatches_per_s"]:
            faster = r["dispatches_per_s"] / base["dispatches_per_s"]
            cheaper = base["dispatcher_cpu_us_per_dispatch"] / max(
                r["dispatcher_cpu_us_per_dispatch"], 1
            )
            ratios.append(
                f"  {w:>5} workers, {n:>6} pending: {faster:6.1f}x dispatches/s, "
                f"{cheaper:6.1f}x less dispatcher CPU per dispatch"
            )
    if ratios:
        print("\nnew vs main (same run):")
        print("\n".join(ratios))
    for w in sorted({r["workers"] for r in results}):
        rows = sorted(
            (r for r in results if r["workers"] == w and r["variant"] == "new"),
            key=lambda r: r["pending"],
        )
        if len(rows) > 1:
            lo, hi = rows[0], rows[-1]
            print(
                f"\nflatness, new, {w} workers, {lo['pending']} → {hi['pending']} pending: "
                f"CPU/dispatch {lo['dispatcher_cpu_us_per_dispatch']:.0f} → "
                f"{hi['dispatcher_cpu_us_per_dispatch']:.0f} µs, commands/dispatch "
                f"{lo['dispatcher_commands_per_dispatch']:.1f} → "
                f"{hi['dispatcher_commands_per_dispatch']:.1f}, dispatches/s "
                f"{lo['dispatches_per_s']:.0f} → {hi['dispatches_per_s']:.0f}"
            )
    for r in results:
        if "check" in r:
            c = r["check"]
            ok = c["jobs"] == c["succeeded"] == c["one_attempt"] == c["delivered_once"]
            print(
                f"\ncheck {r['variant']}: {c['jobs']} jobs, {c['succeeded']} succeeded, "
                f"{c['one_attempt']} after one attempt, {c['delivered_once']} delivered once, "
                f"{c['stale_deliveries']} stale deliveries: {'ok' if ok else 'FAILED'}"
            )


# ---------------------------------------------------------------------------- main


def _load() -> float | None:
    found = loadavg()
    return None if found is None else round(found, 2)


def _ints(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    p = parser("bench.bench_dispatch", __doc__)
    p.add_argument("--workers", type=_ints, default=[10, 100, 1000])
    p.add_argument("--pending", type=_ints, default=[1000, 10_000, 100_000])
    p.add_argument("--owners", type=int, default=100)
    p.add_argument("--seconds", type=float, default=10.0, help="the measured window")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before the window")
    p.add_argument(
        "--job-s", type=float, default=None, help="a job's time on a worker (default: workers/2000)"
    )
    p.add_argument("--variants", default="new,main", help="new (this dispatcher), main")
    p.add_argument("--affinity-wait-s", type=float, default=3.0)
    p.add_argument("--heartbeat-s", type=float, default=2.0)
    p.add_argument("--lease-s", type=float, default=10.0)
    p.add_argument("--models", type=int, default=8)
    p.add_argument("--cache-models", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--redis-url", help="an existing Redis database to use (it is emptied)")
    p.add_argument("--quick", action="store_true", help="a small drained run, checked")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (process logs)")
    p.add_argument(
        "--profile", action="store_true", help="cProfile the dispatcher (with --keep: its .prof)"
    )
    p.add_argument("--role", help=argparse.SUPPRESS)
    p.add_argument("--role-args", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role:
        role_args = json.loads(args.role_args.read_text())
        if args.role == "dispatcher":
            run_dispatcher(role_args)
        else:
            from bench.dispatch_sim import run

            run(role_args)
        return 0
    if args.quick:
        args.workers, args.pending, args.owners = [8], [400], 20
        args.job_s = 0.005 if args.job_s is None else args.job_s
        args.affinity_wait_s = 0.0
    variants = [v for v in args.variants.split(",") if v]
    if set(variants) - {"new", "main"}:
        p.error("--variants: new and/or main")
    from renderfarm import localfarm

    machine = machine_info()
    meta = {
        "machine": machine,
        "machine_line": machine_line(machine, ram=True),
        "loadavg_start": _load(),
        "redis": redis_server_version(),
        "window": (
            "until drained" if args.quick else f"{args.warmup:g} s warm-up + {args.seconds:g} s"
        ),
        "config": config(args),
    }
    results: list[dict[str, Any]] = []
    redis_proc = None
    with run_dir("bench-dispatch-", args.keep, "process logs") as tmp:
        try:
            url = args.redis_url
            if url is None:
                port = localfarm.free_port()
                redis_proc = localfarm.start_redis(port, tmp / "redis")
                url = f"redis://127.0.0.1:{port}/0"
            models_dir = tmp / "models"
            models_dir.mkdir()
            for w in args.workers:
                for n in args.pending:
                    scenario = Scenario(
                        workers=w,
                        pending=n,
                        owners=args.owners,
                        seconds=args.seconds,
                        warmup=args.warmup,
                        job_s=args.job_s if args.job_s is not None else w / 2000,
                        drain=args.quick,
                        affinity_wait_s=args.affinity_wait_s,
                        heartbeat_s=args.heartbeat_s,
                        lease_s=args.lease_s,
                        models=args.models,
                        cache_models=args.cache_models,
                        gpu_share=0.25,
                        seed=args.seed,
                    )
                    for variant in variants:
                        log(f"{w} workers, {n} pending, {variant} (job {scenario.job_s:g} s)")
                        r = run_one(scenario, variant, url, tmp, models_dir, args.profile)
                        r["scenario"] = asdict(scenario)
                        results.append(r)
                        log(
                            f"  {r['dispatches_per_s']:.0f} dispatches/s, pass p50 "
                            f"{_ms(r['pass_ms'])} ms, {r['dispatcher_cpu_us_per_dispatch']:.0f} "
                            "µs CPU per dispatch"
                        )
        finally:
            with sigint_ignored():
                localfarm.stop(redis_proc)
    meta["loadavg_end"] = _load()
    report(results, meta)
    write_json(args.json, {"meta": meta, "results": results})
    if args.quick:
        checks = [r["check"] for r in results]
        bad = [c for c in checks if not c["jobs"] == c["succeeded"] == c["delivered_once"]]
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
