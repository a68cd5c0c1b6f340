#!/usr/bin/env bash
# Installs what a fresh machine lacks, and nothing twice:
#   redis-server (Debian package), chromium and redis-sentinel too with RENDERFARM_BROWSER=1 (tests),
#   and a virtualenv in .venv with renderfarm and its pinned dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
command -v redis-server >/dev/null || packages+=(redis-server)
if [[ "${RENDERFARM_BROWSER:-0}" == 1 ]]; then
  command -v chromium >/dev/null || packages+=(chromium)
  # The Redis high-availability test runs a real Sentinel (tests/test_sentinel.py).
  command -v redis-sentinel >/dev/null || packages+=(redis-sentinel)
fi
if ((${#packages[@]})); then
  sudo=""
  [[ "$(id -u)" == 0 ]] || sudo=sudo
  echo "installing ${packages[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi

[[ -x .venv/bin/python ]] || python3 -m venv .venv
stamp=.venv/.renderfarm-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  echo "installing renderfarm into .venv (first time: torch and friends, a few GB)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi
