"""`renderfarm up`'s processes, each started again when it exits, as a service manager would.

A worker killed mid-job (the kernel's OOM killer, a crash in a native library) comes back
and its job is not lost: the lease lapses and the reaper queues it again. A process that
keeps exiting soon after it starts (a setting it refuses, a port it cannot have) is not
started forever: the farm stops, saying which one.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

# An exit this soon after starting is a failure to start, not a crash in service.
QUICK_EXIT_S = 30.0
# That many in a row and the process is not started again.
MAX_QUICK_EXITS = 3


def exit_reason(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


@dataclass
class Child:
    name: str  # as the messages say it: "the cpu worker"
    start: Callable[[], subprocess.Popen]
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    quick_exits: int = 0

    def launch(self) -> None:
        self.started_at = time.monotonic()
        self.proc = self.start()


@dataclass
class Supervisor:
    """The children in start order; `watch` restarts one that exits until one keeps exiting,
    then returns its message. Stopping them is the caller's (each child's `proc`)."""

    children: list[Child] = field(default_factory=list)
    say: Callable[[str], None] = partial(print, flush=True)
    poll_s: float = 0.5

    def add(self, name: str, start: Callable[[], subprocess.Popen]) -> None:
        child = Child(name, start)
        self.children.append(child)
        child.launch()

    def watch(self) -> str:
        while True:
            for child in self.children:
                assert child.proc is not None
                if child.proc.poll() is None:
                    continue
                gave_up = self._restart(child)
                if gave_up:
                    return gave_up
            time.sleep(self.poll_s)

    def _restart(self, child: Child) -> str | None:
        assert child.proc is not None
        reason = exit_reason(child.proc.returncode)
        quick = time.monotonic() - child.started_at < QUICK_EXIT_S
        child.quick_exits = child.quick_exits + 1 if quick else 0
        if child.quick_exits >= MAX_QUICK_EXITS:
            return (
                f"{child.name} exited {child.quick_exits} times within {QUICK_EXIT_S:.0f} s of "
                f"starting ({reason}); stopping the farm (its output is above)"
            )
        self.say(f"{child.name} exited ({reason}); starting it again")
        time.sleep(child.quick_exits)  # no pause after a crash in service, more each time
        try:
            child.launch()
        except (RuntimeError, TimeoutError) as exc:  # it did not come up: an exit like any
            self.say(f"{child.name} did not start: {exc}")
        return None
