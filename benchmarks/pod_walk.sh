#!/usr/bin/env bash
# The walk of runbooks/pod-setup.md, as a script, with a transcript (issue 18, deliverable 6).
#
#   bash benchmarks/pod_walk.sh                      # on a CUDA machine with this project checked out
#   OUT=/tmp/walk MODEL_DIR=/models/Qwen2.5-0.5B MODEL_KIND=base bash benchmarks/pod_walk.sh
#   WALK_DEVICE=cpu WALK_PY=.venv/bin/python SFT_STEPS=12 bash benchmarks/pod_walk.sh   # CPU check (no GPU)
#
# Steps (each command and its output go to $OUT/transcript.md; files to $OUT):
#  1. copy the checkout to a fresh pod-like tree ($WORK/cai-bootstrap, no .venv), then
#     `bash setup.sh pod` there (venv --system-site-packages on the image's CUDA torch + bitsandbytes).
#     Offline (no package index) it falls back to a --system-site-packages venv and the image's
#     packages, and says so in the transcript.
#  2. a local model folder: $MODEL_DIR (declared kind $MODEL_KIND, default base), or the tiny random
#     Qwen2 built offline (python -m phases.models.tiny).
#  3. a small config on the device: with MODEL_DIR, stage 1 shrunk below demo size (includes
#     phases/stages/demo.yaml, declares demo: true); without, the fixture data steps of
#     tests/integration/sft_fixture_pipeline.py (a random model writes no usable data) and the
#     real stage-1 SFT + evaluation. `runner validate`, then `runner run --detach`.
#  4. `kill -9` of the runner (its whole process group) once SFT has written a checkpoint.
#  5. `runner supervise --config ... ` picks the run up, resumes SFT from its checkpoint, runs
#     the evaluation, and stops at gate sft_gate (policy human): exit 3.
#  6. `runner status --json`, `runner log --errors`, the SFT attempts -> $OUT.
# Exit 0 when the run reached its gate after the kill; otherwise the failing step's exit code.
set -uo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$REPO/pod-walk-out}"
WORK="${WORK:-$(mktemp -d /tmp/pod-walk-XXXXXX)}"
DEVICE="${WALK_DEVICE:-cuda}"
SFT_STEPS="${SFT_STEPS:-300}"
mkdir -p "$OUT"
T="$OUT/transcript.md"
: > "$T"

say() { printf '%s\n' "$*" | tee -a "$T"; }
run() {  # run a command, transcript it (command, output, exit code); return its exit code
  say '```'
  say "\$ $*"
  "$@" > "$OUT/.last" 2>&1
  local rc=$?
  tail -c 20000 "$OUT/.last" | tee -a "$T"
  say "# exit $rc"
  say '```'
  return $rc
}

say "# Pod walk ($(date -u +%Y-%m-%dT%H:%M:%SZ), device $DEVICE)"
say ""
say "## 1. Environment and setup"
run bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"'
run python3 -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
mkdir -p "$WORK"
run bash -c "tar -C '$REPO' --exclude=.venv --exclude=pod-walk-out --exclude=.git --exclude=__pycache__ -cf - . | (mkdir -p '$WORK/cai-bootstrap' && tar -C '$WORK/cai-bootstrap' -xf -)"
cd "$WORK/cai-bootstrap" || exit 2
if [ "$DEVICE" = cuda ]; then
  if ! run bash setup.sh pod; then
    say "setup.sh pod failed (above); walking on with a --system-site-packages venv and the image's packages."
    [ -x .venv/bin/python ] || run python3 -m venv --system-site-packages .venv
  fi
elif [ -z "${WALK_PY:-}" ]; then
  say "WALK_DEVICE=$DEVICE: no CUDA, so setup.sh pod is not run; using a --system-site-packages venv."
  run "${PYTHON:-python3}" -m venv --system-site-packages .venv
fi
export PYTHONPATH="$WORK/cai-bootstrap${PYTHONPATH:+:$PYTHONPATH}" RUNNER_HOME="$WORK/runs" OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
PY="${WALK_PY:-.venv/bin/python}"   # WALK_PY: an existing interpreter with the project's packages (CPU check)
say "interpreter: $PY"
run $PY -c 'import torch, transformers, peft, trl, sqlmodel; print("imports ok: torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__, "trl", trl.__version__)' || exit 2
QUANT=none
if [ "$DEVICE" = cuda ] && $PY -c 'import bitsandbytes' 2>/dev/null; then QUANT=nf4; fi
say "SFT/evaluation quantization: $QUANT (nf4 needs bitsandbytes)"

say ""
say "## 2. A local model folder"
if [ -n "${MODEL_DIR:-}" ]; then
  MODEL="$MODEL_DIR"; KIND="${MODEL_KIND:-base}"
  say "model folder $MODEL, declared kind $KIND"
else
  MODEL="$WORK/models/tiny-random-qwen2"; KIND=""
  # 4096 positions: the stage-1 few-shot prompts run to a few hundred tokens of its 400-token vocab.
  run $PY -c "from phases.models.tiny import build_tiny_model; print(build_tiny_model('$MODEL', max_position_embeddings=4096))" || exit 2
  say "no MODEL_DIR: the tiny random Qwen2 (profile kind random: sentinels are recorded, not enforced)"
fi

say ""
say "## 3. A small config, validated and run"
CFG="$WORK/walk.yaml"
if [ -n "${MODEL_DIR:-}" ]; then
  # A real model writes real instructions: stage 1 below demo size, then SFT and evaluation.
  cat > "$CFG" <<EOF
# Pod walk config: stage 1 below demo size on $DEVICE with a local model folder.
# Launch: .venv/bin/python -m runner supervise --config $CFG
include: $WORK/cai-bootstrap/phases/stages/demo.yaml
demo: true
params:
  prepare_model: {model: "$MODEL", device: $DEVICE, kind: "$KIND"}
  sft: {max_steps: $SFT_STEPS, save_steps: 5, logging_steps: 1, quantization: $QUANT, device: $DEVICE}
  evaluate: {quantization: $QUANT, device: $DEVICE, critic: false}
heldout: {size: 8}
pilot: {size: 16}
scale: {target_kept: 32, shard_size: 16}
gates:
  qc_pilot: {policy: approve}
  qc_scale: {policy: approve}
  sft_gate: {policy: human}
EOF
else
  # A random model writes no usable instructions, so the data steps are the fixture ones of
  # tests/integration/sft_fixture_pipeline.py (stage-1 file contract); SFT, evaluation and the
  # gate are the real stage-1 nodes.
  export PYTHONPATH="$PYTHONPATH:$WORK/cai-bootstrap/tests/integration"
  cat > "$CFG" <<EOF
# Pod walk config: fixture data, the real stage-1 SFT + evaluation on $DEVICE, gate sft_gate (human).
# Launch: PYTHONPATH=.:tests/integration .venv/bin/python -m runner supervise --config $CFG
pipeline: sft_fixture_pipeline:pipeline
seed: 7
max_attempts: 3
params:
  prepare_model: {model: "$MODEL"}
  heldout: {n: 8}
  merge: {n: 16}
  sft: {max_steps: $SFT_STEPS, save_steps: 5, logging_steps: 1, per_device_batch_size: 2, grad_accum: 1,
        max_seq_len: 128, dev_fraction: 0.25, lora_r: 4, lora_alpha: 8, quantization: $QUANT, device: $DEVICE}
  # The walk checks recovery, not the benchmark: no IFEval and no task/refusal critics here
  # (benchmarks/gpu_eval.py runs the full evaluation).
  evaluate: {max_new_tokens: 16, batch_size: 8, n_boot: 200, arms: [raw, instruction], critic: false,
             ifeval_limit: 0, task_critic: false, refusal_critic: false, quantization: $QUANT, device: $DEVICE}
gates:
  sft_gate: {policy: human}
EOF
fi
run cat "$CFG"
run $PY -m runner validate --config "$CFG" || exit 2
run $PY -m runner run --config "$CFG" --run-id walk --detach || exit $?

say ""
say "## 4. kill -9 during SFT"
ckpt_seen() { ls -d "$RUNNER_HOME"/artifacts/walk/sft/.work-*/trainer/checkpoint-* >/dev/null 2>&1; }
for _ in $(seq 1 9000); do
  ckpt_seen && break
  st=$($PY -m runner status --json 2>/dev/null | $PY -c 'import json,sys; print(json.load(sys.stdin)["state"])' 2>/dev/null)
  case "$st" in running|ready|"") ;; *) say "the run stopped before an SFT checkpoint (state $st)"; run $PY -m runner log --errors --limit 20; exit 1 ;; esac
  sleep 0.2
done
ckpt_seen || { say "no SFT checkpoint within 30 min"; exit 1; }
run bash -c "ls -d '$RUNNER_HOME'/artifacts/walk/sft/.work-*/trainer/checkpoint-*"
PID=$($PY -c "import sqlite3; print(sqlite3.connect('$RUNNER_HOME/.runner/runner.db').execute(\"SELECT pid FROM leases WHERE run_id='walk'\").fetchone()[0])")
run bash -c "kill -9 -- -$PID 2>/dev/null || kill -9 $PID; sleep 1; ps -p $PID >/dev/null && echo 'still alive' || echo 'runner pid $PID killed (SIGKILL)'"
run $PY -m runner status

say ""
say "## 5. runner supervise picks up"
run $PY -m runner supervise --config "$CFG" --backoff-max 5
RC=$?
run $PY -m runner status
run $PY -m runner log --errors --limit 20
$PY -m runner status --json > "$OUT/status.json" 2>&1
$PY - <<EOF > "$OUT/sft_attempts.json"
import json, sqlite3
c = sqlite3.connect("$RUNNER_HOME/.runner/runner.db")
rows = c.execute("SELECT step, number, status, substr(coalesce(error, ''), 1, 300) FROM attempts ORDER BY id").fetchall()
print(json.dumps([dict(zip(("step", "number", "status", "error"), r)) for r in rows], indent=1))
EOF
run cat "$OUT/sft_attempts.json"
say ""
if [ "$RC" = 3 ]; then
  say "RESULT: the run reached gate sft_gate after kill -9 during SFT (supervise exit 3)."
  exit 0
fi
say "RESULT: supervise exited $RC; the run did not reach its gate (see above)."
exit "$RC"
