"""Screenshots of every dashboard page, from a real local farm with demo jobs.

    PYTHONPATH=. .venv/bin/python docs/screenshots.py [--out docs]

Starts redis-server, the scheduler, one CPU worker and the dashboard (renderfarm/localfarm.py)
on free ports in a temporary folder, writes the demo models, makes a few accounts, submits
jobs of several kinds and owners through the REST API, signs in through the login page in
headless Chromium at 1440x900 and saves docs/<page>.png.
"""

from __future__ import annotations

import argparse
import base64
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

from redis import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dashboard.accounts import Accounts  # noqa: E402
from renderfarm import localfarm  # noqa: E402
from shared.client import FarmClient  # noqa: E402
from shared.config import Settings  # noqa: E402
from worker.demo_models import write_demo_models  # noqa: E402

PASSWORD = "screenshots only"


def png(width: int, height: int, seed: int = 0) -> str:
    """A small gradient PNG as a data URL."""
    from PIL import Image

    img = Image.new("RGB", (width, height))
    img.putdata(
        [
            ((x * 255 // width + seed) % 256, y * 255 // height, (x + y + seed) % 256)
            for y in range(height)
            for x in range(width)
        ]
    )
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def mask(width: int, height: int) -> str:
    from PIL import Image, ImageDraw

    img = Image.new("L", (width, height), 0)
    ImageDraw.Draw(img).ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4), 255)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def demo_jobs(url: str, tokens: dict[str, str]) -> dict[str, str]:
    """Submit a mix of jobs; return the ids worth a screenshot."""
    ana, ben, cho = (FarmClient(url, token=tokens[n], timeout=30) for n in ("ana", "ben", "cho"))
    base = {"model": "demo-sd15", "width": 64, "height": 64, "steps": 4}
    done = []
    prompts = [
        "a lighthouse at dusk, oil painting",
        "a paper boat on a rainy street",
        "isometric cozy library, warm light",
        "a red fox in the snow, telephoto",
    ]
    for i, prompt in enumerate(prompts):
        client = (ana, ben, cho)[i % 3]
        done.append(client.submit({**base, "prompt": prompt, "seed": 100 + i})["id"])
    hires = ben.submit(
        {
            **base,
            "prompt": "mountain village at sunrise, hires fix",
            "seed": 7,
            "hires": {"scale": 2, "upscaler": "latent", "steps": 2, "denoising_strength": 0.5},
            "sampler": "DPM++ 2M Karras",
        }
    )["id"]
    img2img = ana.submit(
        {
            **base,
            "kind": "img2img",
            "prompt": "the same scene as a watercolor",
            "init_image": png(64, 64),
            "denoising_strength": 0.6,
        }
    )["id"]
    inpaint = cho.submit(
        {
            **base,
            "kind": "img2img",
            "prompt": "a golden sun in the middle",
            "init_image": png(64, 64, 80),
            "mask": mask(64, 64),
        }
    )["id"]
    upscale = ana.submit(
        {"kind": "upscale", "image": png(48, 48, 40), "upscaler": "demo-esrgan-x4", "scale": 4}
    )["id"]
    batch = ben.submit_batch(
        spec={**base, "prompt": "tileable stone texture, variations", "batch_count": 3}
    )
    done += [hires, img2img, inpaint, upscale, *[j["id"] for j in batch["jobs"]]]
    for job_id in done:
        ana.wait(job_id, 180)
    canceled = cho.submit({**base, "prompt": "a job canceled by its owner", "hardware": "gpu"})
    cho.cancel(canceled["id"])
    # Waiting jobs: one for a class no worker has, one behind a long render.
    cho.submit({**base, "prompt": "portrait study, needs a gpu", "hardware": "gpu"})
    long = ana.submit({**base, "prompt": "a long render: 150 steps", "steps": 150, "width": 256})
    ben.submit({**base, "prompt": "queued behind the long render", "steps": 30}, priority="low")
    return {"job": hires, "inpaint": inpaint, "long": long["id"]}


def shoot(url: str, out: Path, ids: dict[str, str], admin: str) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=localfarm.CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
        page.goto(url + "/login")
        page.screenshot(path=str(out / "login.png"))
        page.fill("input[name=name]", admin)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_selector("#whoami")

        def snap(name: str, path: str, ready: str, settle: float = 0.8) -> None:
            page.goto(url + path)
            page.wait_for_selector(ready, timeout=30_000)
            time.sleep(settle)
            page.screenshot(path=str(out / f"{name}.png"))
            print("wrote", out / f"{name}.png")

        snap("queue", "/", "#job-rows tr.status-row-running", 1.5)
        snap("job", f"/jobs/{ids['job']}", "#images img.full")
        snap("job-inputs", f"/jobs/{ids['inpaint']}", "#inputs img")
        page.goto(url + f"/submit?from={ids['job']}")
        page.wait_for_selector("#reused:not([hidden])")
        snap("submit", f"/submit?from={ids['job']}", "#reused:not([hidden])")
        snap("gallery", "/gallery", "#grid .tile, #gallery-empty:not([hidden])", 1.5)
        snap("workers", "/workers", "#worker-rows tr")
        snap("models", "/models", "#families section")
        snap("admin", "/admin", "#audit-rows tr")
        snap("account", "/account", "#me-hardware:not(:empty)")
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="renderfarm-shots-") as tmp:
        root = Path(tmp)
        write_demo_models(root / "models")
        port = localfarm.free_port()
        redis_proc = localfarm.start_redis(port, root / "redis")
        redis_url = f"redis://127.0.0.1:{port}/0"
        env = {
            "RENDERFARM_REDIS_URL": redis_url,
            "RENDERFARM_STORAGE_URL": f"file://{root / 'outputs'}",
            "RENDERFARM_MODELS_DIR": str(root / "models"),
            "HF_HUB_OFFLINE": "1",
        }
        procs = [redis_proc]
        try:
            procs.append(localfarm.start_scheduler(env, log=root / "scheduler.log"))
            procs.append(localfarm.start_worker("cpu", env, log=root / "worker.log"))
            dash_port = localfarm.free_port()
            procs.append(
                localfarm.start_dashboard("127.0.0.1", dash_port, env, log=root / "dash.log")
            )
            url = f"http://127.0.0.1:{dash_port}"
            accounts = Accounts(Redis.from_url(redis_url), Settings())
            accounts.create("lead", "admin", PASSWORD)
            accounts.create("ops", "operator", PASSWORD)
            tokens = {}
            for name in ("ana", "ben", "cho"):
                accounts.create(name, "member", PASSWORD)
                tokens[name] = accounts.create_token(name, label="screenshots")[1]
            accounts.create("render-bot", "member")
            accounts.create_token("lead", label="laptop")
            accounts.create_token("lead", label="ci", expires_at=time.time() + 30 * 86400)
            localfarm.wait_for(
                lambda: bool(FarmClient(url, token=tokens["ana"]).workers()),
                120,
                "a live worker",
            )
            ids = demo_jobs(url, tokens)
            shoot(url, args.out, ids, "lead")
        finally:
            localfarm.stop(*reversed(procs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
