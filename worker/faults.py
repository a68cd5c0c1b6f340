"""Fault injection for the fault tests: every hook is off unless its variable is set.

Each `RENDERFARM_FAULT_*_PROMPT` names a prompt; a job with exactly that prompt misbehaves
the way a real fault would, so the tests can watch the farm recover.
"""

from __future__ import annotations

import os
from typing import Any

from shared.jobspec import AnySpec
from worker.attempt import Attempt


def _poison(name: str) -> str | None:
    return os.environ.get(f"RENDERFARM_FAULT_{name}_PROMPT") or None


def kill_injected(record: dict[str, Any]) -> bool:
    """RENDERFARM_FAULT_KILL_PROMPT: the job kills its worker once running (as a model that
    segfaults would)."""
    poison = _poison("KILL")
    return poison is not None and record["spec"].get("prompt") == poison


def stall_injected(spec: AnySpec, att: Attempt) -> bool:
    """RENDERFARM_FAULT_STALL_PROMPT: the job hangs in its first attempt (as a wedged driver
    would) until the watchdog gives it up."""
    poison = _poison("STALL")
    return poison is not None and getattr(spec, "prompt", None) == poison and att.attempt == 1


def oom_injected(spec: AnySpec, models_cached: int) -> bool:
    """RENDERFARM_FAULT_OOM_PROMPT: the job runs as if on a device with room for one model:
    out of memory while more than one is cached."""
    poison = _poison("OOM")
    return poison is not None and getattr(spec, "prompt", None) == poison and models_cached > 1
