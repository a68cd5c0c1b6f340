"""The `renderfarm` command: one entry point; each component adds its own commands."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import redis
import requests
from pydantic import ValidationError

from dashboard import accounts_cli
from dashboard import cli as dashboard_cli
from renderfarm import jobs_cli, models_cli, up
from scheduler import cli as scheduler_cli
from shared.client import ApiError
from shared.config import Settings
from shared.sentinel import without_password
from worker import cli as worker_cli

JOB_ID_LENGTH = 32  # hex digits (scheduler.control.new_job_id)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="renderfarm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for commands in (
        up,
        scheduler_cli,
        worker_cli,
        dashboard_cli,
        accounts_cli,
        jobs_cli,
        models_cli,
    ):
        commands.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Nothing is ever fetched from a model hub: models come from the model store.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ApiError as exc:  # a refused request: the API's answer, not a traceback
        print(f"renderfarm {args.command}: {exc.reason} ({exc.status})", file=sys.stderr)
        target = getattr(args, "target", "")
        if exc.status == 404 and args.command != "drain" and 0 < len(target) < JOB_ID_LENGTH:
            print(
                f"{target!r} is not a whole job id: the dashboard shows a job by the last 8 of its"
                f" {JOB_ID_LENGTH} digits (hover it, or `renderfarm jobs`, for the whole id)",
                file=sys.stderr,
            )
        return 1
    except requests.ConnectionError:  # the client commands: no dashboard answering
        api = getattr(args, "api", "")
        print(
            f"renderfarm {args.command}: cannot reach the farm at {api} (is it up? --api)",
            file=sys.stderr,
        )
        return 1
    except redis.ConnectionError:  # the commands that read Redis itself
        url = without_password(Settings().redis_url)
        print(
            f"renderfarm {args.command}: cannot reach Redis at {url} (RENDERFARM_REDIS_URL)",
            file=sys.stderr,
        )
        return 1
    except ValidationError as exc:  # a setting the environment got wrong, by its variable
        if exc.title != Settings.__name__:
            raise
        for error in exc.errors():
            name = "RENDERFARM_" + "_".join(map(str, error["loc"])).upper()
            print(f"renderfarm {args.command}: {name}: {error['msg']}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before a command handles it (a worker still starting)
        return 130
    except BrokenPipeError:  # the reader of our output went away (`| head`): end quietly
        # Nothing more reaches it, including what Python flushes at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
