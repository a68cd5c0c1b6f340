"""The submission benchmark's smallest run (bench/bench_submit.py): every side it compares
is served and measured (the real dashboard, the empty app, raw Celery), so the figures the
README quotes can be measured again. A smoke run: nothing here is timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIDES = {"api", "inproc", "celery", "floor", "empty", "lean", "api_image", "celery_image"}


def test_the_submission_benchmark_measures_every_side(tmp_path):
    out = tmp_path / "submit.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_submit", "--n", "5", "--rounds", "1"]
        + ["--clients", "1", "--processes", "1", "--image-side", "64", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,  # a guard against a hang, not a measurement
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(out.read_text())["results"]["1"]["1"]
    assert set(figures["per_s"]) == SIDES and all(v > 0 for v in figures["per_s"].values())
    rates = figures["per_s"]
    assert figures["api_vs_celery"] == rates["api"] / rates["celery"]
    # What a submission costs in Redis: the server's token step and record step, each side.
    calls = figures["redis_commands_per_call"]
    assert calls["empty"] == 0 and calls["celery"] > 0
    assert calls["inproc"] < calls["lean"] <= calls["api"], calls
    assert "API/send_task" in done.stdout, "the table a reader compares"
