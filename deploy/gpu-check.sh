#!/usr/bin/env bash
# The real CUDA check, for a session that is lent a GPU machine (the `device` tool): that
# machine has Python 3.12 with torch and the NVIDIA stack, no internet, and none of the
# farm's other dependencies, so they travel with the working tree.
#
#   deploy/gpu-check.sh prepare   here: the wheels (cp312) and Debian packages that machine
#                                 lacks, at the versions of this .venv, into .device/ (~50 MiB)
#   deploy/gpu-check.sh run       there, with carry [".device"]: installs them under /tmp,
#                                 runs the CUDA tests and the GPU end-to-end benchmark;
#                                 logs and JSON land in $OUT (or .device/out)
#
# GPU_CHECK_N (default 10) sets the benchmark's jobs per side; GPU_CHECK_PYTHON (default 3.12,
# that machine's) the Python the wheels are for, e.g. 3.11 to try `run` on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."

# The farm's runtime and test dependencies that the GPU machine's image does not have
# (it has torch, numpy, pillow, safetensors, accelerate, requests, pytest, jinja2, ...).
CARRY=(
  amqp annotated-types aura-sr billiard blinker boto3 botocore celery cffi click-didyoumean
  click-plugins click-repl cryptography diffusers flask flask-cors huggingface-hub
  importlib-metadata itsdangerous jmespath kombu lazy-importer moto prompt-toolkit
  py-partiql-parser pycparser pydantic pydantic-core pydantic-settings python-dotenv redis
  responses s3transfer spandrel tokenizers transformers typing-inspection tzlocal vine
  wcwidth xmltodict
)
# redis-server (Debian's build) and the libraries it links that a bare image may lack.
DEBS=(redis-server redis-tools liblzf1 libjemalloc2 libsystemd0 libssl3 libatomic1)

prepare() {
  [[ -x .venv/bin/python ]] || ./deploy/install.sh
  rm -rf .device && mkdir -p .device/wheels .device/debs
  mapfile -t pins < <(.venv/bin/python - "${CARRY[@]}" <<'EOF'
import sys
from importlib.metadata import version

for name in sys.argv[1:]:
    print(f"{name}=={version(name)}")
EOF
  )
  platforms=()
  for p in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
    manylinux_2_34_x86_64 manylinux_2_5_x86_64; do
    platforms+=(--platform "$p")
  done
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --implementation cp \
    --python-version "${GPU_CHECK_PYTHON:-3.12}" "${platforms[@]}" -d .device/wheels "${pins[@]}"
  apt-get update -qq
  (cd .device/debs && apt-get download -qq "${DEBS[@]}")
  du -sh .device
  echo "now: device run, command 'bash deploy/gpu-check.sh run', carry [\".device\"]"
}

run() {
  local out=${OUT:-.device/out}
  mkdir -p "$out"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .device/wheels/*.whl
  export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
  mkdir -p /tmp/redis
  for f in .device/debs/*.deb; do dpkg -x "$f" /tmp/redis; done
  export PATH="/tmp/redis/usr/bin:$PATH"
  export LD_LIBRARY_PATH="/tmp/redis/usr/lib/x86_64-linux-gnu:/tmp/redis/lib/x86_64-linux-gnu"
  {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    command -v redis-server && redis-server --version
    python3 -c 'import torch, diffusers; print("torch", torch.__version__, "cuda",
      torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0),
      "diffusers", diffusers.__version__)'
  } 2>&1 | tee "$out/machine.txt"
  python3 -m pytest -q -p no:cacheprovider -rs tests/test_gpu_worker.py tests/test_tiers.py \
    2>&1 | tee "$out/tests.log" || true
  timeout 420 python3 -m bench.bench_e2e --hardware gpu --model sd15 --n "${GPU_CHECK_N:-10}" \
    --json "$out/bench_e2e_gpu.json" 2>&1 | tee "$out/bench_e2e_gpu.log"
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  *)
    echo "usage: $0 prepare|run" >&2
    exit 2
    ;;
esac
