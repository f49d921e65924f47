"""GPU check of DPO: QLoRA DPO on CUDA (random small Qwen2-architecture model, 4-bit nf4 base with
bf16 compute) through the same code the ``dpo`` step calls (phases/dpo.py): a QLoRA "SFT" adapter
merged into the nf4 base, a fresh DPO LoRA, the stored reference pass (batched vs one at a time),
a few optimizer steps with checkpoints, then a resume that must continue from the last checkpoint.

Run on a CUDA machine from the repo root (bitsandbytes, trl, peft installed or carried as wheels):
    python3 benchmarks/gpu_check_dpo.py --out $OUT
CPU code check (no 4-bit):  python3 benchmarks/gpu_check_dpo.py --cpu-dry-run --out /tmp/gpu_check_dpo
Writes gpu_check_dpo.json under --out and prints it; exit 0 when every check passed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAIRS = [{"instruction": f"Name thing number {i}.", "chosen": f"Thing {i} is a small red ball.",
          "rejected": "No. " * (i % 3 + 1) + "I will not."} for i in range(16)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or tempfile.mkdtemp(prefix="gpu_check_dpo-"))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--cpu-dry-run", action="store_true", help="the same flow on CPU without 4-bit (a code check)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    import torch
    from peft import LoraConfig, get_peft_model

    dev = "cpu" if a.cpu_dry_run else "cuda"
    if dev == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU", file=sys.stderr)
        return 2
    from phases.dpo import DPO_DEFAULTS, build_pair_examples, load_policy, sequence_logps, train_dpo
    from phases.models.loader import load_model
    from phases.models.tiny import build_tiny_model

    events: list[dict] = []

    def log(msg: str, kind: str = "log", **data) -> None:
        events.append({"kind": kind, "message": msg, **data})
        print(f"[{kind}] {msg}", flush=True)

    t0 = time.time()
    mdir = build_tiny_model(out / "qwen2-random", seed=0, hidden_size=256, num_layers=4, max_position_embeddings=2048)
    sft = out / "sft_adapter"
    base = load_model(str(mdir), device="cpu", dtype="float32", backend="hf", run_sentinels=False)
    torch.manual_seed(0)
    pm = get_peft_model(base.model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
    pm.save_pretrained(str(sft))
    (sft / "cai_adapter.json").write_text(json.dumps({"base_model_id": base.model_id}))
    del base, pm
    params = {**DPO_DEFAULTS, "device": dev, "max_steps": a.steps, "save_steps": a.steps // 2, "per_device_batch_size": 4,
              "grad_accum": 1, "max_seq_len": 256, "logging_steps": 1, "lora_r": 16, "lora_alpha": 16,
              "learning_rate": 1e-4}
    loaded, model, d, quant, gc = load_policy(str(mdir), sft, params, 1234)
    ex, counts = build_pair_examples(loaded, PAIRS, 256)
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_ref = time.time()
    batched = sequence_logps(model, ex, loaded.eos_token_id, 8)
    ref_s = time.time() - t_ref
    single = sequence_logps(model, ex, loaded.eos_token_id, 1)
    max_diff = max(abs(b[k] - s[k]) for b, s in zip(batched, single) for k in b)
    ex = [{**e, **r} for e, r in zip(ex, batched)]
    work = out / "work"
    res = train_dpo(loaded, model, ex, PAIRS, params, work, out / "run1", 1234, d, quant, gc, sft, log)
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev == "cuda" else 0.0
    in4 = bool(getattr(loaded.model, "is_loaded_in_4bit", False))
    del loaded, model
    # resume: more steps in the same work dir must continue from the last checkpoint
    loaded, model, d, quant, gc = load_policy(str(mdir), sft, {**params, "max_steps": a.steps + 2}, 1234)
    res2 = train_dpo(loaded, model, ex, PAIRS, {**params, "max_steps": a.steps + 2}, work, out / "run2", 1234, d, quant,
                     gc, sft, log)
    first = res["curve"][0] if res["curve"] else {}
    checks = {
        "device_is_target": res["device"] == dev,
        "nf4_4bit_on_cuda": (quant == "nf4" and in4) if dev == "cuda" else quant is None,
        "reference_batched_equals_single": max_diff <= (0.5 if dev == "cuda" else 1e-5),
        "step0_rewards_near_zero": abs(first.get("rewards/chosen", 9)) < (0.05 if dev == "cuda" else 1e-4),
        "loss_finite": all(math.isfinite(c["loss"]) for c in res["curve"]),
        "trained_all_steps": res["metrics"]["global_step"] == a.steps,
        "resumed_from_checkpoint": (res2["resumed_from"] or {}).get("step") == a.steps,
        "adapter_written": (out / "run2" / "adapter" / "adapter_model.safetensors").is_file(),
    }
    report = {"checks": checks, "passed": all(checks.values()), "device": dev, "quantization": quant,
              "loaded_in_4bit": in4, "gpu": torch.cuda.get_device_name(0) if dev == "cuda" else None,
              "pairs": counts, "ref_pass_seconds": round(ref_s, 3), "ref_max_abs_diff_batched_vs_single": max_diff,
              "peak_train_mib": round(peak, 1), "curve": res["curve"], "metrics": res["metrics"],
              "resume": res2["resumed_from"], "wall_seconds": round(time.time() - t0, 1),
              "note": "bf16 compute on CUDA: batched vs single reference log-probs agree to bf16 rounding, not bit-exactly"}
    (out / "gpu_check_dpo.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(json.dumps({k: report[k] for k in ("checks", "passed", "device", "quantization", "ref_max_abs_diff_batched_vs_single",
                                             "peak_train_mib", "wall_seconds")}, indent=1, default=str))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
