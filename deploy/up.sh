#!/usr/bin/env bash
# One command for a local farm: install what is missing, then Redis + a CPU worker + the
# dashboard on http://127.0.0.1:8000 (arguments go to `renderfarm up`). Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/install.sh
exec .venv/bin/renderfarm up "$@"
