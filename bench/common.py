"""What the benchmarks under bench/ share: the machine's figures, models, command-line plumbing.

Importing this module makes sure nothing comes from a model hub: unless already set, it sets
HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE and HF_HUB_DISABLE_PROGRESS_BARS before diffusers or
transformers are imported, here and, through the environment, in every process a benchmark
starts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

MIB = 2**20


def log(msg: str) -> None:
    """A progress line on stderr (stdout carries the report)."""
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- the machine


def machine_info() -> dict[str, Any]:
    """CPU model, core counts (all and usable by this process) and RAM bytes (or None)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        mem = next(
            int(line.split()[1]) * 1024
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        )
    except (OSError, StopIteration):
        mem = None
    return {"cpu_model": cpu, "cpu_count": os.cpu_count(), "usable_cores": usable, "mem": mem}


def machine_line(machine: dict[str, Any], ram: bool = False) -> str:
    """A report's "machine" line up to the load average: CPU, cores and (with `ram`) RAM."""
    line = (
        f"machine   {machine['cpu_model']}, {machine['cpu_count']} cores "
        f"({machine['usable_cores']} usable)"
    )
    if ram and machine["mem"]:
        line += f", {machine['mem'] / 2**30:.0f} GiB RAM"
    return line


def versions_line(versions: dict[str, str]) -> str:
    """A report's "versions" line: "versions  python 3.11.7, torch ..."."""
    return "versions  " + ", ".join(f"{k} {v}" for k, v in versions.items())


def loadavg() -> float | None:
    """The 1-minute load average, or None where the system has none."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def redis_server_version() -> str | None:
    """The installed redis-server's version, or None without one."""
    try:
        out = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        return None
    return next((w.split("=", 1)[1] for w in out.split() if w.startswith("v=")), out.strip())


class OtherLoad:
    """CPU time the machine spent on processes this benchmark did not start.

    Other work on a small machine (a test run next door) shows up as outliers on both
    sides; this says how much there was while measuring.
    """

    def __init__(self, pids: list[int]) -> None:
        import psutil

        self.procs = [psutil.Process(pid) for pid in pids]
        self.start = self._sample()
        self.t0 = time.monotonic()

    def _sample(self) -> tuple[float, float, float]:
        import psutil

        t = psutil.cpu_times()
        busy = t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)
        ours = 0.0
        for proc in self.procs:
            try:
                c = proc.cpu_times()
                ours += c.user + c.system
            except psutil.Error:
                pass
        return busy, ours, getattr(t, "steal", 0.0)

    def stop(self) -> dict[str, float]:
        busy, ours, steal = self._sample()
        wall = time.monotonic() - self.t0
        cores = os.cpu_count() or 1
        other = max(0.0, (busy - self.start[0]) - (ours - self.start[1]))
        return {
            "wall_s": wall,
            "ours_cpu_s": ours - self.start[1],
            "other_cpu_s": other,
            "other_share": other / (wall * cores) if wall else 0.0,
            "steal_s": steal - self.start[2],
        }


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


# ---------------------------------------------------------------------------- models


def quiet_libraries() -> None:
    """No progress bars or info logs from diffusers/transformers while timing."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def write_model(models_dir: Path, folder: str, name: str, build: Callable[[Path], None]) -> None:
    """`build(path)` a model into the store's `folder`; it appears under `name` once complete."""
    target = models_dir / folder / name
    staging = models_dir / folder / f".{name}.partial"
    staging.parent.mkdir(parents=True, exist_ok=True)
    build(staging)
    staging.rename(target)


# ---------------------------------------------------------------------------- command line


def parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose --help shows the module docstring as written."""
    return argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def config(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed arguments as JSON values (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def write_json(path: Path | None, figures: dict[str, Any]) -> None:
    """--json: write the figures to `path` (if given) and say so."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"\nfigures written to {path}")


@contextmanager
def run_dir(
    prefix: str, keep: bool, kept: str = "", say: Callable[[str], None] = log
) -> Iterator[Path]:
    """A temp dir for one run, removed at the end unless `keep` (`kept`: what it holds).

    SIGTERM is turned into KeyboardInterrupt, so it stops the run the way Ctrl-C does and
    the caller's clean-up runs.
    """
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
    finally:
        if keep:
            say(f"kept {tmp} ({kept})" if kept else f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def sigint_ignored() -> Iterator[None]:
    """Ignore Ctrl-C inside, e.g. while stopping processes, so no child is left behind."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, or "(no log)"."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def api_token(redis_url: str, name: str = "bench", role: str = "admin") -> str:
    """A new API token of the account `name` in the farm's Redis (created with `role` if
    new): the benchmarks call the API as a signed-in program would."""
    from redis import Redis

    from dashboard.accounts import Accounts
    from shared.config import Settings

    accounts = Accounts(Redis.from_url(redis_url), Settings(redis_url=redis_url))
    if accounts.get(name) is None:
        accounts.create(name, role)
    return accounts.create_token(name, label="benchmark")[1]
