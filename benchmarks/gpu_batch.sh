#!/usr/bin/env bash
# The lead's batched GPU runs on a lent H200 (the records in docs/gpu/ and benchmarks/results/h200-2026-12-01/).
# Each part ends inside the 10-minute call limit (every job has its own `timeout`) and leaves one tarball
# under $OUT. The DPO runner part (dpo_runner) now runs benchmarks/gpu_dpo_runner.yaml as is (every step on
# CUDA, docs/gpu/dpo-check.md "Second run"); single1/single2 ran an earlier form of it (a 4k tiny model
# and the real candidates step), which is why the record of single2 shows candidates failing.
#
#   bash benchmarks/gpu_batch.sh scale2  # 2 GPUs (nvidia-h200-x2): issue 17 scale step 1 vs 2 workers + a kill
#   bash benchmarks/gpu_batch.sh single1 # one GPU: issue 11 evaluation + DPO runner side by side, then bench_dpo
#   bash benchmarks/gpu_batch.sh single2 # one GPU: DPO runner, 32B bench, SFT bench (one at a time)
#   bash benchmarks/gpu_batch.sh single3 # one GPU: `runner resume` of a CPU-prepared DPO run (docs/gpu/dpo-check.md);
#     prepare it here first: build /tmp/tiny4k (phases.models.tiny.build_tiny_model(..., max_position_embeddings=4096)),
#     write gpu_dpo_runner.yaml with that model and params.dpo/evaluate_dpo.device: cuda as /tmp/dpo-gpu.yaml,
#     `runner --home /tmp/dpo-home run --config /tmp/dpo-gpu.yaml --run-id gpu` (stops at dpo: no CUDA), then copy
#     /tmp/dpo-home, /tmp/tiny4k and /tmp/dpo-gpu.yaml into .gpucarry/ (git-excluded) and carry it.
# Needs: the image's CUDA torch, and the wheels under .whl (docs/performance.md "Reproduce").
set -u
part="${1:?usage: gpu_batch.sh single1|single2|single3|single4|scale2}"
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 2; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
OUT="${OUT:-/tmp/gpu-batch-out}"
R=/tmp/gpu-batch/$part
rm -rf "$R" && mkdir -p "$R" "$OUT"
nvidia-smi -L > "$R/nvidia-smi.txt" 2>&1
python3 -c 'import torch, transformers, trl, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "trl", trl.__version__, "peft", peft.__version__, "gpus", torch.cuda.device_count())' > "$R/versions.txt" 2>&1
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "$R/timeline.txt"; }

collect_dpo_run() {  # the DPO run's manifests, summaries and status into $R/dpo_runner
  mkdir -p "$R/dpo_runner"
  (cd /tmp/dpo-home/artifacts/gpu 2>/dev/null && find . -maxdepth 3 \( -name '*.json' -o -name 'summary.txt' \) \
     -path '*dpo*' -exec cp --parents {} "$R/dpo_runner" \;)
  PYTHONPATH="tests/integration:.:${PYTHONPATH:-}" python3 -m runner --home /tmp/dpo-home status > "$R/dpo_runner/status.txt" 2>&1
}

dpo_runner() {  # issue 13: DPO through runner on CUDA (QLoRA), benchmarks/gpu_dpo_runner.yaml as is
  python3 -m phases.models.embedded prepare tiny-random-qwen2 > "$R/dpo_runner.log" 2>&1  # its model, built offline
  timeout "$1" env PYTHONPATH="tests/integration:.:${PYTHONPATH:-}" python3 -m runner --home /tmp/dpo-home run \
    --config benchmarks/gpu_dpo_runner.yaml --run-id gpu >> "$R/dpo_runner.log" 2>&1
  stamp "dpo runner rc=$?"
  collect_dpo_run
}

if [ "$part" = single1 ]; then  # one GPU: the two correctness runs side by side, then the DPO benchmark alone
  ( stamp "gpu_eval start"; timeout 400 python3 benchmarks/gpu_eval.py --out "$R/eval" > "$R/eval.log" 2>&1
    stamp "gpu_eval rc=$?" ) &
  ( stamp "dpo runner start"; dpo_runner 300 ) &
  wait
  left=$(( 555 - ($(date +%s) - t0) ))
  stamp "bench_dpo start ($left s left)"
  timeout "$left" python3 benchmarks/bench_dpo.py --sizes 1.5B,7B --out "$R/dpo" > "$R/bench_dpo.log" 2>&1
  stamp "bench_dpo rc=$?"
elif [ "$part" = single2 ]; then  # one GPU, one job at a time: DPO through runner, 32B, the SFT benchmark
  stamp "dpo runner start"; dpo_runner 120
  stamp "bench_32b start"
  timeout 300 python3 benchmarks/bench_32b.py --out "$R/32b" > "$R/bench_32b.log" 2>&1
  stamp "bench_32b rc=$?"
  left=$(( 555 - ($(date +%s) - t0) ))
  stamp "bench_sft start ($left s left)"
  timeout "$left" python3 benchmarks/run_all.py --out "$R/sft" --only sft --sft-sizes 1.5B,7B > "$R/bench_sft.log" 2>&1
  stamp "bench_sft rc=$?"
elif [ "$part" = single3 ]; then
  # issue 13: resume on CUDA a run whose data steps ran on a CPU (a random model's *sampled* instructions on
  # CUDA all failed the parser; on the CPU they did not): its dpo step (params.dpo.device: cuda) failed there
  # with "no CUDA GPU"; here `runner resume` trains DPO with QLoRA and runs evaluate_dpo on CUDA.
  cp -r .gpucarry/dpo-home /tmp/dpo-home && cp -r .gpucarry/tiny4k /tmp/tiny4k && cp .gpucarry/dpo-gpu.yaml /tmp/dpo-gpu.yaml
  stamp "dpo resume start"
  timeout 150 env PYTHONPATH="tests/integration:.:${PYTHONPATH:-}" python3 -m runner --home /tmp/dpo-home resume \
    > "$R/dpo_runner.log" 2>&1
  stamp "dpo resume rc=$?"
  collect_dpo_run
  tar czf "$R/dpo_runner/home.tgz" -C /tmp dpo-home
  [ "${SKIP_PF:-0}" = 1 ] && { tar czf "$OUT/$part.tgz" -C /tmp/gpu-batch "$part"; exit 0; }
  stamp "bench_sft (TRL defaults vs TRL + Liger + padding_free) start"
  timeout $(( 330 - ($(date +%s) - t0) )) python3 benchmarks/bench_sft.py --sizes 1.5B,7B --variants trl,trl_liger_pf \
    --out "$R/sft_pf" > "$R/bench_sft_pf.log" 2>&1
  stamp "bench_sft rc=$?"
elif [ "$part" = single4 ]; then  # one GPU: the fully-GPU DPO runner run on the merged code, then the critic route rows
  stamp "dpo runner start"; dpo_runner 150
  left=$(( 330 - ($(date +%s) - t0) ))
  stamp "bench critic start ($left s left)"
  timeout "$left" python3 benchmarks/run_all.py --out "$R/critic" --only critic --sizes 0.5B,1.5B,7B > "$R/bench_critic.log" 2>&1
  stamp "bench critic rc=$?"
elif [ "$part" = scale2 ]; then  # issue 17: needs 2 GPUs (not lent on 2026-12-01; not run yet)
  stamp "scale start"
  timeout 540 python3 benchmarks/bench_scale.py --workers 2 --size 0.5B --items 4096 --out "$R/scale" > "$R/scale.log" 2>&1
  stamp "scale rc=$?"
else
  echo "unknown part $part"; exit 2
fi
stamp "done"
tar czf "$OUT/$part.tgz" -C /tmp/gpu-batch "$part"
ls -la "$OUT"
cat "$R/timeline.txt"
