"""The client commands: submit and steer jobs and workers through the REST API, as any
program would (shared/client.py)."""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

import requests

from shared.cliargs import whole_number
from shared.client import FarmClient
from shared.config import Settings
from shared.vocabulary import AUTO, JobKind, JobStatus, Priority, StatusView

DEFAULT_API = "http://127.0.0.1:8000"
API_HELP = f"the farm (default: RENDERFARM_API_URL, else var/renderfarm.api, else {DEFAULT_API})"


def _client(args: argparse.Namespace) -> FarmClient:
    """The API at --api (else RENDERFARM_API_URL, else the address file's), as
    RENDERFARM_TOKEN's account, else the token file's (`up` writes both for its local admin)."""
    settings = Settings()
    token = settings.token.get_secret_value() if settings.token else None
    if token is None and settings.token_file.is_file():
        token = settings.token_file.read_text().strip()
    args.api = args.api or api_url(settings)
    return FarmClient(args.api, token)


def api_url(settings: Settings) -> str:
    if settings.api_url:
        return settings.api_url
    if settings.api_file.is_file():
        return settings.api_file.read_text().strip()
    return DEFAULT_API


def _image(path: Path) -> str:
    try:
        return base64.b64encode(path.read_bytes()).decode()
    except OSError as exc:
        raise SystemExit(f"renderfarm submit: cannot read {path}: {exc.strerror}") from None


def _download(client: FarmClient, job: dict[str, Any], folder: Path, command: str) -> None:
    """The job's images into `folder`, a path a line; a folder it cannot write is a message."""
    try:
        for path in client.download(job, folder):
            print(path)
    except requests.RequestException:  # an OSError too: the farm's, said by main
        raise
    except OSError as exc:
        raise SystemExit(f"renderfarm {command}: cannot write {folder}: {exc.strerror}") from None


# The options of one kind only: given for another, they would be left out of its spec.
KIND_OPTIONS = {
    "init_image": JobKind.IMG2IMG,
    "mask": JobKind.IMG2IMG,
    "image": JobKind.UPSCALE,
    "upscaler": JobKind.UPSCALE,
    "scale": JobKind.UPSCALE,
    "hires_scale": JobKind.TXT2IMG,
}


def spec_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The job spec of `renderfarm submit`'s options, for every kind."""
    for name, kind in KIND_OPTIONS.items():
        if getattr(args, name) is not None and args.kind != kind:
            option = "--" + name.replace("_", "-")
            raise SystemExit(
                f"renderfarm submit: {option} is for --kind {kind}, not {args.kind} (it would be"
                f" ignored)"
            )
    if args.kind == JobKind.UPSCALE:
        if args.image is None or args.upscaler is None:
            raise SystemExit("--kind upscale needs --image FILE and --upscaler NAME")
        spec: dict[str, Any] = {"kind": args.kind, "image": _image(args.image),
                                "upscaler": args.upscaler, "hardware": args.hardware}  # fmt: skip
        if args.scale is not None:
            spec["scale"] = args.scale
        else:
            spec["width"], spec["height"] = args.width, args.height
        return spec
    spec = {
        "kind": args.kind,
        "prompt": args.prompt,
        "model": args.model,
        "steps": args.steps,
        "width": args.width,
        "height": args.height,
        "batch_size": args.batch_size,
        "sampler": args.sampler,
        "cfg_scale": args.cfg_scale,
        "hardware": args.hardware,
        "negative_prompt": args.negative_prompt,
    }
    if args.seed is not None:
        spec["seed"] = args.seed
    if args.kind == JobKind.IMG2IMG:
        if args.init_image is None:
            raise SystemExit("--kind img2img needs --init-image FILE")
        spec["init_image"] = _image(args.init_image)
        spec["denoising_strength"] = args.denoising_strength
        if args.mask is not None:
            spec["mask"] = _image(args.mask)
    elif args.hires_scale is not None:
        spec["hires"] = {"scale": args.hires_scale, "upscaler": args.hires_upscaler}
    return spec


class ProgressBar:
    """A live bar (tqdm, on stderr) fed by the job record each time the client reads it."""

    def __init__(self, job_id: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=100, desc=job_id[-8:], unit="%", file=sys.stderr,
                        bar_format="{desc} {bar} {n:.0f}% {postfix}")  # fmt: skip

    def __call__(self, job: dict[str, Any]) -> None:
        self.bar.n = round(float(job["progress"]) * 100, 1)
        self.bar.set_postfix_str(job["status"], refresh=False)
        self.bar.refresh()
        if job["status"] in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED):
            self.bar.close()


def cmd_submit(args: argparse.Namespace) -> int:
    """One job, or with --batch-count N a batch of N jobs shared by the workers (as the
    dashboard's form sends it): each job's id a line, then, waiting, each job as it ends."""
    if args.batch_count > 1 and args.kind == JobKind.UPSCALE:
        raise SystemExit("renderfarm submit: --batch-count is for txt2img and img2img")
    client = _client(args)
    spec, given = spec_from_args(args), {"owner": args.owner, "priority": args.priority}
    if args.batch_count > 1:
        jobs = client.submit_batch(spec={**spec, "batch_count": args.batch_count}, **given)["jobs"]
    else:
        jobs = [client.submit(spec, **given)]
    for job in jobs:
        print(job["id"], flush=True)
    if not (args.wait or args.out):
        return 0
    ended = []
    for job in jobs:  # in their order: the first ones start first
        bar = ProgressBar(job["id"])
        ended.append(client.wait(job["id"], timeout=float("inf"), poll_s=0.2, on_poll=bar))
    print(json.dumps(ended[0] if len(ended) == 1 else ended, indent=2))
    if any(job["status"] != JobStatus.SUCCEEDED for job in ended):
        return 1
    if args.out:
        for job in ended:
            _download(client, job, args.out, "submit")
    return 0


def cmd_control(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.command == "drain":
        print(json.dumps(client.drain(args.target, not args.undo)))
        return 0
    if args.command == "priority":
        job = client.set_priority(args.target, args.priority)
    elif args.command == "delete":
        client.delete(args.target)
        print(f"{args.target} deleted")
        return 0
    else:
        job = getattr(client, args.command)(args.target)  # cancel, retry
    print(f"{job['id']} {job['status']} priority={job['priority']}")
    return 0


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _what(job: dict[str, Any]) -> str:
    """The kind, the model (an upscale's upscaler) and the size, as the queue page shows them."""
    spec = job["spec"]
    size = f"{spec['width']}x{spec['height']}" if spec.get("width") else f"x{spec.get('scale')}"
    if spec.get("hires"):  # rendered at that size, then upscaled by the hires fix
        size += f"->x{spec['hires']['scale']:g}"
    kind = "inpaint" if spec["kind"] == JobKind.IMG2IMG and spec.get("mask") else spec["kind"]
    return f"{kind} {spec.get('model') or spec.get('upscaler')} {size}"


def _worker(job: dict[str, Any]) -> str | None:
    """Where the job runs or ran; a job queued again is not on the worker it last ran on."""
    if job.get("worker") and job["status"] == StatusView.QUEUED:
        return f"{job['worker']} (its last attempt)"
    return job.get("worker")


def cmd_jobs(args: argparse.Namespace) -> int:
    client = _client(args)
    found = client.find_jobs(
        owner=args.owner, status=args.status, model=args.model, q=args.q, per_page=args.limit
    )
    if args.json:
        print(json.dumps(found["jobs"], indent=2))
        return 0
    now = time.time()
    for job in found["jobs"]:
        status = job["status"]
        if status == JobStatus.RUNNING:
            status += f" {job['progress']:.0%}"
        elif status == "queued" and job.get("queue_position"):
            status += f" #{job['queue_position']}"
        prompt = " ".join(str(job["spec"].get("prompt", "")).split())
        print(
            f"{job['id']}  {status:<14} {job['owner']:<14} {_what(job):<32} "
            f"{_ago(now - job['created_at']):>11}  {prompt[:40]}"
        )
    shown, total = len(found["jobs"]), found["total"]
    jobs = "job" if total == 1 else "jobs"
    print(f"({shown} of {total} {jobs})" if total > shown else f"({shown} {jobs})")
    if found.get("truncated"):
        print(
            f"(the search read only the newest {found['searched']} jobs of the other filters:"
            " narrow them, with --owner, --status or --model, to search older ones)"
        )
    return 0


def cmd_job(args: argparse.Namespace) -> int:
    client = _client(args)
    job = client.job(args.target)
    if args.json:
        print(json.dumps(job, indent=2))
        return 0
    lines = {
        "status": job["status"] + (f" {job['progress']:.0%}" if job["status"] == "running" else ""),
        "owner": job["owner"],
        "job": _what(job),
        "prompt": job["spec"].get("prompt"),
        "worker": _worker(job),
        "attempts": job["attempts"],
        "seeds": ", ".join(map(str, job["seeds"])),
        "waiting": job.get("waiting") if job["status"] == "queued" else None,
        "note": job.get("note"),  # what a running job is doing besides rendering
        "error": job.get("error"),
    }
    for name, value in lines.items():
        if value not in (None, ""):
            print(f"{name + ':':<10}{value}")
    for out in job["outputs"]:
        print(f"{'output:':<10}{client.url}{out['url']}")
    for given in job.get("inputs", []):
        print(f"{'input:':<10}{given['field']} {client.url}{given['url']}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    client = _client(args)
    job = client.job(args.target)
    if job["status"] != JobStatus.SUCCEEDED:
        raise SystemExit(f"job {args.target} is {job['status']}: it has no images to download")
    _download(client, job, args.out, "download")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("jobs", help="list jobs, newest first (filters as the queue page's)")
    p.add_argument("--owner", help='an account, or "me"')
    p.add_argument("--status", help="queued, running, succeeded, failed, canceled (a,b: either)")
    p.add_argument("--model", help="a checkpoint (an upscale's upscaler)")
    p.add_argument("--q", metavar="WORDS", help="words in the prompt")
    # --limit: a page of the API's (per_page); --batch-count: the farm refuses over its bound.
    p.add_argument("--limit", type=whole_number(1, 200), default=20, help="how many (at most 200)")
    p.add_argument("--json", action="store_true", help="the jobs as the API gives them")
    p.add_argument("--api", help=API_HELP)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("job", help="one job: status, progress, worker, error, images")
    p.add_argument("target", metavar="JOB_ID")
    p.add_argument("--json", action="store_true", help="the job as the API gives it")
    p.add_argument("--api", help=API_HELP)
    p.set_defaults(func=cmd_job)

    p = sub.add_parser("download", help="a succeeded job's images, into a folder")
    p.add_argument("target", metavar="JOB_ID")
    p.add_argument("--out", type=Path, default=Path("."), help="the folder (default: here)")
    p.add_argument("--api", help=API_HELP)
    p.set_defaults(func=cmd_download)

    for name, text in (
        ("cancel", "cancel a queued or running job"),
        ("retry", "run a failed or canceled job again"),
        ("priority", "change the priority of a queued job"),
        ("delete", "delete a finished job with its outputs"),
        ("drain", "let a worker finish its job and take no new ones"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("target", metavar="WORKER" if name == "drain" else "JOB_ID")
        p.add_argument("--api", help=API_HELP)
        if name == "priority":
            p.add_argument("priority", choices=[p.value for p in Priority])
        if name == "drain":
            p.add_argument("--undo", action="store_true", help="take new jobs again")
        p.set_defaults(func=cmd_control)

    p = sub.add_parser("submit", help="submit a job (any kind) through the REST API")
    p.add_argument("prompt", nargs="?", default="")
    p.add_argument("--kind", default=JobKind.TXT2IMG, choices=[k.value for k in JobKind])
    p.add_argument("--init-image", type=Path, help="img2img: the image to start from")
    p.add_argument("--mask", type=Path, help="img2img: inpaint where the mask is white")
    p.add_argument("--denoising-strength", type=float, default=0.75)
    p.add_argument("--hires-scale", type=float, help="txt2img: hires fix by this factor")
    p.add_argument("--hires-upscaler", default="latent")
    p.add_argument("--image", type=Path, help="upscale: the image to upscale")
    p.add_argument("--upscaler", help="upscale: an upscaler model from the store")
    p.add_argument("--scale", type=float, help="upscale: by this factor (else --width/--height)")
    p.add_argument("--api", help=API_HELP)
    p.add_argument("--model", default="demo-sd15")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=1, help="images per job")
    p.add_argument(
        "--batch-count",
        type=whole_number(1),
        default=1,
        metavar="N",
        help="a batch of N jobs, seeds continuing",
    )
    p.add_argument("--cfg-scale", type=float, default=7.0)
    p.add_argument("--sampler", default="Euler a")
    p.add_argument("--seed", type=int)
    p.add_argument("--hardware", default=AUTO)
    p.add_argument("--priority", default=Priority.NORMAL, choices=[p.value for p in Priority])
    p.add_argument("--owner", help="submit on behalf of this account (operators and admins)")
    p.add_argument("--wait", action="store_true", help="wait for the job, with a progress bar")
    p.add_argument("--out", type=Path, help="download the images into this folder")
    p.set_defaults(func=cmd_submit)
