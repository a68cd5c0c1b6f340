"""The client commands: submit and steer jobs and workers through the REST API, as any
program would (shared/client.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from shared.client import FarmClient
from shared.config import Settings
from shared.vocabulary import AUTO, JobStatus, Priority

DEFAULT_API = "http://127.0.0.1:8000"


def _client(args: argparse.Namespace) -> FarmClient:
    """The API at --api, as RENDERFARM_TOKEN's account, else the token file's (`up` writes
    one for its local admin)."""
    settings = Settings()
    token = settings.token.get_secret_value() if settings.token else None
    if token is None and settings.token_file.is_file():
        token = settings.token_file.read_text().strip()
    return FarmClient(args.api, token)


def cmd_submit(args: argparse.Namespace) -> int:
    spec = {
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
    client = _client(args)
    job = client.submit(spec, owner=args.owner, priority=args.priority)
    print(job["id"], flush=True)
    if not (args.wait or args.out):
        return 0
    job = client.wait(job["id"], timeout=float("inf"), poll_s=0.2)
    print(json.dumps(job, indent=2))
    if job["status"] != JobStatus.SUCCEEDED:
        return 1
    if args.out:
        for path in client.download(job, args.out):
            print(path)
    return 0


def cmd_control(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.command == "drain":
        print(json.dumps(client.drain(args.target, not args.undo)))
        return 0
    if args.command == "priority":
        job = client.set_priority(args.target, args.priority)
    else:
        job = getattr(client, args.command)(args.target)  # cancel, retry
    print(f"{job['id']} {job['status']} priority={job['priority']}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    for name, text in (
        ("cancel", "cancel a queued or running job"),
        ("retry", "run a failed or canceled job again"),
        ("priority", "change the priority of a queued job"),
        ("drain", "let a worker finish its job and take no new ones"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("target", metavar="WORKER" if name == "drain" else "JOB_ID")
        p.add_argument("--api", default=DEFAULT_API)
        if name == "priority":
            p.add_argument("priority", choices=list(Priority))
        if name == "drain":
            p.add_argument("--undo", action="store_true", help="take new jobs again")
        p.set_defaults(func=cmd_control)

    p = sub.add_parser("submit", help="submit a txt2img job through the REST API")
    p.add_argument("prompt")
    p.add_argument("--api", default=DEFAULT_API)
    p.add_argument("--model", default="demo-sd15")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--cfg-scale", type=float, default=7.0)
    p.add_argument("--sampler", default="Euler a")
    p.add_argument("--seed", type=int)
    p.add_argument("--hardware", default=AUTO)
    p.add_argument("--priority", default=Priority.NORMAL, choices=list(Priority))
    p.add_argument("--owner", help="submit on behalf of this account (operators and admins)")
    p.add_argument("--wait", action="store_true", help="wait for the job to finish")
    p.add_argument("--out", type=Path, help="download the images into this folder")
    p.set_defaults(func=cmd_submit)
