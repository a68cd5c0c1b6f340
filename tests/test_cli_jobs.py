"""`renderfarm jobs`, `job` and `download`: the queue, one job and its images from a shell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import suppress

from PIL import Image

from shared.client import ApiError
from tests.signin import account_token

TINY = {"model": "demo-sd15", "width": 64, "height": 64, "steps": 2}


def cli(farm, *args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "RENDERFARM_TOKEN": account_token(farm.redis, "cli-lister")}
    return subprocess.run(
        [sys.executable, "-m", "renderfarm", *args, "--api", farm.url],
        env=env, capture_output=True, text=True, timeout=120, cwd=cwd,
    )  # fmt: skip


def test_listing_showing_and_downloading_jobs(farm, tmp_path):
    with farm.as_account("cli-lister") as me:
        done = me.wait(me.submit({**TINY, "prompt": "a  quiet\nharbour"})["id"], timeout=120)
        waiting = me.submit({**TINY, "prompt": "waits for a gpu", "hardware": "gpu"})
    assert done["status"] == "succeeded", done["error"]
    try:
        listed = cli(farm, "jobs", "--owner", "me", cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert lines[0].startswith(waiting["id"]) and "queued #" in lines[0]  # newest first
        assert lines[1].startswith(done["id"]) and "succeeded" in lines[1]
        assert "txt2img demo-sd15 64x64" in lines[1] and "a quiet harbour" in lines[1]
        assert lines[-1] == "(2 jobs)"
        only = cli(farm, "jobs", "--owner", "me", "--status", "succeeded", "--json", cwd=tmp_path)
        assert [j["id"] for j in json.loads(only.stdout)] == [done["id"]]

        shown = cli(farm, "job", done["id"], cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert "status:   succeeded" in shown.stdout
        assert f"output:   {farm.url}/api/v1/jobs/{done['id']}/outputs/0" in shown.stdout
        assert "waiting:" in cli(farm, "job", waiting["id"], cwd=tmp_path).stdout

        got = cli(farm, "download", done["id"], "--out", str(tmp_path / "renders"), cwd=tmp_path)
        assert got.returncode == 0, got.stderr
        assert Image.open(tmp_path / "renders" / f"{done['id']}-0.png").size == (64, 64)
        refused = cli(farm, "download", waiting["id"], cwd=tmp_path)
        assert refused.returncode == 1 and "is queued: it has no images" in refused.stderr
        missing = cli(farm, "job", "no-such-job", cwd=tmp_path)
        assert missing.returncode == 1 and "404" in missing.stderr
    finally:
        farm.client.cancel(waiting["id"])


def test_a_file_it_cannot_read_or_write_is_a_message_not_a_traceback(farm, tmp_path):
    with farm.as_account("cli-lister") as me:
        done = me.wait(me.submit({**TINY, "prompt": "kept on the farm"})["id"], timeout=120)
    assert done["status"] == "succeeded", done["error"]
    a_file = tmp_path / "renders"
    a_file.write_text("not a folder")
    got = cli(farm, "download", done["id"], "--out", str(a_file), cwd=tmp_path)
    assert got.returncode == 1 and "Traceback" not in got.stderr, got.stderr
    assert f"renderfarm download: cannot write {a_file}" in got.stderr
    missing = tmp_path / "no-such.png"
    sent = cli(farm, "submit", "x", "--kind", "img2img", "--init-image", str(missing), cwd=tmp_path)
    assert sent.returncode == 1 and "Traceback" not in sent.stderr, sent.stderr
    assert f"renderfarm submit: cannot read {missing}: No such file or directory" in sent.stderr


def test_an_inpainting_job_is_listed_as_inpaint_as_the_queue_page_shows_it(farm, tmp_path):
    Image.new("RGB", (64, 64), (200, 40, 40)).save(tmp_path / "init.png")
    Image.new("L", (64, 64), 255).save(tmp_path / "mask.png")
    sent = cli(farm, "submit", "a painted door", "--kind", "img2img", "--init-image",
               str(tmp_path / "init.png"), "--mask", str(tmp_path / "mask.png"), "--width", "64",
               "--height", "64", "--steps", "2", "--wait", cwd=tmp_path)  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    job_id = sent.stdout.splitlines()[0]
    listed = cli(farm, "jobs", "--owner", "me", "--q", "a painted door", cwd=tmp_path)
    assert listed.stdout.splitlines()[0].startswith(job_id), listed.stdout
    assert "inpaint demo-sd15 64x64" in listed.stdout
    assert "job:      inpaint demo-sd15 64x64" in cli(farm, "job", job_id, cwd=tmp_path).stdout


def test_a_hires_job_is_listed_with_its_upscale_as_the_queue_page_shows_it(farm, tmp_path):
    sent = cli(farm, "submit", "a tall lighthouse", "--width", "64", "--height", "64",
               "--steps", "2", "--hires-scale", "1.5", cwd=tmp_path)  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    job_id = sent.stdout.splitlines()[0]
    listed = cli(farm, "jobs", "--owner", "me", "--q", "a tall lighthouse", cwd=tmp_path)
    assert listed.stdout.splitlines()[0].startswith(job_id), listed.stdout
    assert "txt2img demo-sd15 64x64->x1.5" in listed.stdout


def test_a_job_queued_again_names_the_worker_of_its_last_attempt_as_such(farm, tmp_path):
    slow = {**TINY, "width": 256, "height": 256, "steps": 150, "hardware": "cpu"}
    with farm.as_account("cli-lister") as me:
        first = me.submit({**slow, "prompt": "tried once"})
        ran = me.wait(first["id"], 60, until={"running"})
        me.cancel(first["id"])
        assert me.wait(first["id"], 60)["status"] == "canceled"
        blocker = me.submit({**slow, "prompt": "holds the worker"})
        try:
            me.wait(blocker["id"], 60, until={"running"})
            assert me.retry(first["id"])["status"] == "queued"  # behind the blocker
            shown = cli(farm, "job", first["id"], cwd=tmp_path).stdout
            assert f"worker:   {ran['worker']} (its last attempt)" in shown, shown
        finally:
            for job in (blocker, first):
                with suppress(ApiError):  # 409 if it finished already
                    me.cancel(job["id"])


def test_a_limit_out_of_range_is_refused_by_its_own_name(farm, tmp_path):
    for limit in ("0", "500"):
        refused = cli(farm, "jobs", "--limit", limit, cwd=tmp_path)
        assert refused.returncode == 2, refused.stderr
        assert "argument --limit: must be between 1 and 200" in refused.stderr
        assert "per_page" not in refused.stderr  # the API's name for it, not the command's


def test_a_setting_out_of_range_is_named_by_its_variable_not_a_traceback(tmp_path):
    for command in (["jobs"], ["scheduler"]):
        env = {**os.environ, "RENDERFARM_KEEP_JOBS_DAYS": "7d"}
        done = subprocess.run(
            [sys.executable, "-m", "renderfarm", *command],
            env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert (
            f"renderfarm {command[0]}: RENDERFARM_KEEP_JOBS_DAYS: Input should be a valid number"
            in done.stderr
        )


def test_a_short_id_from_the_dashboard_is_told_apart_from_a_missing_job(farm, tmp_path):
    with farm.as_account("cli-lister") as me:
        done = me.wait(me.submit({**TINY, "prompt": "known by its tail"})["id"], timeout=120)
        gone = me.wait(me.submit({**TINY, "prompt": "deleted"})["id"], timeout=120)
        me.delete(gone["id"])
    short = done["id"][-8:]  # what the queue page, the job page and the deletion notice show
    for command in ("job", "download", "delete"):
        told = cli(farm, command, short, cwd=tmp_path)
        assert told.returncode == 1, told.stderr
        assert (
            f"'{short}' is not a whole job id" in told.stderr and "renderfarm jobs" in told.stderr
        )
    missing = cli(farm, "job", gone["id"], cwd=tmp_path)
    assert missing.returncode == 1 and "404" in missing.stderr
    assert "not a whole job id" not in missing.stderr
