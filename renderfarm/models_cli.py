"""`renderfarm models push` and `renderfarm models list`: the model store from a shell."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shared.config import Settings
from shared.modelstore import FAMILIES, NotAModel, open_model_store


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    for unit, scale in (("KB", 1e3), ("MB", 1e6)):
        if n < scale * 1000:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1e9:.1f} GB"


def _fail(command: str, message: str) -> int:
    print(f"renderfarm models {command}: {message}", file=sys.stderr)
    return 1


def cmd_push(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from shared.s3models import S3ModelStore

    try:
        store = open_model_store(Settings())
    except ValueError as exc:
        return _fail("push", str(exc))
    if not isinstance(store, S3ModelStore):
        return _fail(
            "push",
            "RENDERFARM_MODELS_URL is not set: push uploads to an object-store model store "
            f"(s3://bucket/prefix); the folder store {store.location} takes a copy of the model "
            "in its family's folder",
        )
    try:
        manifest, uploaded = store.push(args.path, args.family, args.name, report=print)
    except NotAModel as exc:
        return _fail("push", str(exc))
    except (BotoCoreError, ClientError) as exc:
        return _fail("push", f"the model store {store.location} refused or did not answer: {exc}")
    files = len(manifest.files)
    print(
        f"pushed {manifest.family} {manifest.name!r} ({manifest.kind}, "
        f"{_size(manifest.size_bytes)}, {files} file{'s' * (files != 1)}, {uploaded} uploaded) "
        f"to {store.location}"
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    try:
        store = open_model_store(Settings())
    except ValueError as exc:
        return _fail("list", str(exc))
    try:
        models = store.list(args.family)
    except Exception as exc:  # an object store's errors (botocore's), said plainly
        return _fail("list", f"could not list the model store {store.location}: {exc}")
    if args.json:
        print(json.dumps({"store": store.location, "models": [m.as_dict() for m in models]}))
        return 0
    print(f"model store: {store.location}")
    rows = [(m.name, m.family, m.kind, _size(m.size_bytes)) for m in models]
    header = ("NAME", "FAMILY", "KIND", "SIZE")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if not rows:
        print("(no models)")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="the model store: push a model, list the store")
    models = p.add_subparsers(dest="models_command", required=True)

    push = models.add_parser(
        "push",
        help="upload a model to the object-store model store (RENDERFARM_MODELS_URL)",
        description="Upload a diffusers folder, an upscaler file or an AuraSR folder: each "
        "distinct file once (files already in the store are skipped), then its manifest.",
    )
    push.add_argument("path", type=Path, metavar="PATH")
    push.add_argument("--family", required=True, choices=FAMILIES)
    push.add_argument("--name", help="the name jobs use (default: the folder or file name)")
    push.set_defaults(func=cmd_push)

    ls = models.add_parser("list", help="the models in the store: name, family, kind, size")
    ls.add_argument("--family", choices=FAMILIES)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
