#!/usr/bin/env bash
# One command for the whole test suite (lint first); arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
RENDERFARM_BROWSER=1 ./deploy/install.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
