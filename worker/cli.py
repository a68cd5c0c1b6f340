"""`renderfarm worker` and `renderfarm demo-models`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared.config import Settings
from shared.vocabulary import Hardware


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.device import DeviceUnavailable
    from worker.main import PreloadFailed, run_worker

    try:
        run_worker(Settings(), Hardware(args.hardware), args.loglevel, args.preload, args.device)
    except (DeviceUnavailable, PreloadFailed) as exc:
        print(f"renderfarm worker: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_demo_models(args: argparse.Namespace) -> int:
    from worker.demo_models import write_demo_models

    models_dir = args.models_dir or Settings().models_dir
    written = write_demo_models(models_dir, force=args.force)
    print(f"demo models in {models_dir.resolve()}: wrote {written or 'nothing (all present)'}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run a worker for one hardware class")
    p.add_argument("--hardware", choices=[h.value for h in Hardware], default=Hardware.CPU)
    p.add_argument("--loglevel", default="INFO")
    p.add_argument(
        "--device",
        help="gpu workers: torch device, e.g. cuda:1 (default cuda:0); "
        "openvino workers: OpenVINO device, e.g. GPU (default RENDERFARM_OPENVINO_DEVICE)",
    )
    p.add_argument(
        "--preload",
        action="append",
        metavar="CHECKPOINT",
        help="load this checkpoint before taking jobs (repeatable)",
    )
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("demo-models", help="write tiny random-weight demo models")
    p.add_argument("--models-dir", type=Path)
    p.add_argument("--force", action="store_true", help="rewrite models that exist")
    p.set_defaults(func=cmd_demo_models)
