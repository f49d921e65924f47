"""GPU check of SFT and evaluation: a short QLoRA run (random small Qwen2-architecture model, 4-bit
nf4 base with bf16 compute, a few optimizer steps, checkpoint + resume) and a short paired
evaluation (three base arms + the trained arm, critic, a few IFEval prompts) on CUDA.

It calls the same code the `sft` and `evaluate` steps call (phases/sft.py, phases/evaluate.py),
without the runner (the GPU image lacks the runner's CLI packages and matplotlib).

Run on a CUDA machine from the repo root (bitsandbytes, trl, peft installed or carried as wheels):
    python3 benchmarks/gpu_check_sft.py --out /tmp/gpu_check
Writes gpu_check_sft.json under --out and prints it; exit 0 when every check passed.
The recorded output of one run is in docs/gpu/sft-check.md.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAIRS = [("Name a color.", "Blue."), ("What is 2 + 2?", "2 + 2 = 4."), ("Give the opposite of hot.", "Cold."),
         ("Name a planet.", "Mars."), ("Say hello in French.", "Bonjour."), ("Name a yellow fruit.", "A banana."),
         ("Write one word that rhymes with cat.", "Hat."), ("What color is the sky?", "The sky is blue.")]
HELDOUT = [
    ("formatting_lists", "Name three fruits. Do not use any commas in your response.", "punctuation:no_comma", {}),
    ("safety_refusals", "Explain how to pick a neighbor's lock. Your entire response should be in English, and in all "
     "lowercase letters.", "change_case:english_lowercase", {}),
    ("simple_qa", "What is the capital of France? Include the keywords Paris in the response.", "keywords:existence",
     {"keywords": ["Paris"]}),
    ("summarizing", "Summarize: the cat sat on the mat all day. Answer with less than 20 words.",
     "length_constraints:number_words", {"relation": "less than", "num_words": 20}),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=tempfile.mkdtemp(prefix="gpu_check_sft-"))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--cpu-dry-run", action="store_true", help="run the same flow on CPU without 4-bit (a code check)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    import torch

    dev, quant = ("cpu", None) if a.cpu_dry_run else ("cuda", "nf4")
    if not a.cpu_dry_run and not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU", file=sys.stderr)
        return 2
    from phases import evaluate as ev
    from phases.models.loader import load_model
    from phases.models.tiny import build_tiny_model
    from phases.sft import SFT_DEFAULTS, run_sft

    events: list[dict] = []

    def log(msg: str, kind: str = "log", **data) -> None:
        events.append({"kind": kind, "message": msg, **data})
        print(f"[{kind}] {msg}", flush=True)

    t0 = time.time()
    mdir = build_tiny_model(out / "qwen2-random", seed=0, hidden_size=256, num_layers=4, max_position_embeddings=2048)
    records = [{"instruction": i, "response": r} for i, r in PAIRS * 4]
    params = {**SFT_DEFAULTS, "device": dev, "max_steps": a.steps, "save_steps": a.steps // 2, "per_device_batch_size": 4,
              "grad_accum": 2, "max_seq_len": 256, "dev_fraction": 0.125, "logging_steps": 1, "lora_r": 16,
              "lora_alpha": 32}
    work = out / "work"
    cuda = dev == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    res = run_sft(records, str(mdir), params, work, out / "run1", 1234, log)
    peak_train = torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0
    # resume: the same work dir and more steps must continue from the last checkpoint, not from 0
    res2 = run_sft(records, str(mdir), {**params, "max_steps": a.steps + a.steps // 2}, work, out / "run2", 1234, log)
    resumed = [e for e in events if e["kind"] == "sft_resumed"]

    items = [{"id": f"h{i}", "family": f, "instruction": inst, "instruction_id_list": [iid], "kwargs": [kw]}
             for i, (f, inst, iid, kw) in enumerate(HELDOUT * 2)]
    adapter = out / "run2" / "adapter"
    eparams = {**ev.EVAL_DEFAULTS, "max_new_tokens": 32, "n_boot": 1000, "ifeval_max_new_tokens": 64}
    arms = ("raw", "instruction", "urial")  # the few-shot arm needs a stage's examples; gpu_eval.py runs it
    instr = [r["instruction"] for r in items]
    from phases.ifeval import load_prompts

    prompts = load_prompts()[:4]
    t_eval = time.time()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    mem = (lambda: torch.cuda.memory_allocated() / 2**20) if cuda else (lambda: 0.0)
    mem_before_eval = mem()  # what training left allocated (should be ~0)
    base = load_model(str(mdir), device=dev, quantization=quant, backend="hf", batch_size=8, run_sentinels=False)
    gens, crit = {}, {}
    for arm in arms:
        gens[arm] = ev.generate_batch(base, arm, instr, eparams["max_new_tokens"])
        crit[arm] = ev.critic_batch(base, [{"instruction": i, "response": g["response"]} for i, g in zip(instr, gens[arm])], 1.0)
    scored = {a_: [{**g, **ev.score_item(r, g["response"], g["truncated"])} for r, g in zip(items, gens[a_])] for a_ in gens}
    best = max(arms, key=lambda x: (sum(o["success"] for o in scored[x]), -arms.index(x)))
    if_outs = {f"base:{best}": ev.generate_batch(base, best, [p.prompt for p in prompts], eparams["ifeval_max_new_tokens"])}
    mem_base = mem()
    del base
    import gc

    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    mem_after_free = mem()
    trained = load_model(str(mdir), device=dev, quantization=quant, backend="hf", batch_size=8, run_sentinels=False)
    ev.attach_adapter(trained, adapter)
    gens["trained"] = ev.generate_batch(trained, "trained", instr, eparams["max_new_tokens"])
    again = ev.generate_batch(trained, "trained", instr, eparams["max_new_tokens"])
    if_outs["trained"] = ev.generate_batch(trained, "trained", [p.prompt for p in prompts], eparams["ifeval_max_new_tokens"])
    with trained.model.disable_adapter():
        crit["trained"] = ev.critic_batch(trained, [{"instruction": i, "response": g["response"]}
                                                    for i, g in zip(instr, gens["trained"])], 1.0)
    scored["trained"] = [{**g, **ev.score_item(r, g["response"], g["truncated"])} for r, g in zip(items, gens["trained"])]
    for arm in crit:
        for o, c in zip(scored[arm], crit[arm]):
            o["critic"] = c
    report = ev.build_report(items, scored, list(arms), eparams, 7, {"model_ref": "random qwen2 (gpu check)"})
    report2 = ev.build_report(items, scored, list(arms), eparams, 7, {"model_ref": "random qwen2 (gpu check)"})
    ife = ev.ifeval_report(prompts, if_outs, eparams, 7)
    eval_s = time.time() - t_eval
    peak_eval = torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0

    try:
        import bitsandbytes
        bnb_v = bitsandbytes.__version__
    except ImportError:
        bnb_v = None
    import peft
    import transformers

    try:
        import trl
        trl_v = trl.__version__
    except ImportError:
        trl_v = None
    checks = {
        "qlora_nf4": a.cpu_dry_run or (res["quantization"] == "nf4" and res["loaded_in_4bit"]),
        "trained_steps": res["metrics"]["global_step"] == a.steps,
        "loss_finite": all(math.isfinite(p["loss"]) for p in res["loss_curve"]["train"]),
        "checkpoints_written": len(res["checkpoints"]) >= 1,
        "resumed_from_checkpoint": bool(resumed) and resumed[-1]["from_step"] == a.steps,
        "resumed_run_finished": res2["metrics"]["global_step"] == a.steps + a.steps // 2,
        "adapter_written": (adapter / "adapter_model.safetensors").is_file(),
        "eval_all_arms": set(report["arms"]) == {"raw", "instruction", "urial", "trained"},
        "eval_greedy_reproducible": again == gens["trained"] and report == report2,
        "memory_freed_between_models": mem_after_free <= mem_before_eval + 1.0 and (not cuda or mem_base > mem_before_eval),
        "training_memory_freed": mem_before_eval < 8.0,
        "ifeval_metrics": set(ife["arms"]) == {f"base:{best}", "trained"},
    }
    result = {
        "checks": checks, "all_passed": all(checks.values()),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu (dry run)",
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
                     "peft": peft.__version__, "trl": trl_v, "bitsandbytes": bnb_v},
        "model": {"arch": "Qwen2 (random)", "hidden_size": 256, "layers": 4, "vocab": 400},
        "sft": {k: res[k] for k in ("device", "quantization", "loaded_in_4bit", "trainer", "gradient_checkpointing",
                                    "examples", "checkpoints", "metrics", "gpu_seconds")},
        "sft_resume": {"event": resumed[-1] if resumed else None, "metrics": res2["metrics"]},
        "peak_gpu_mib": {"train": round(peak_train, 1), "eval": round(peak_eval, 1)},
        "gpu_mib_after_training": round(mem_before_eval, 1), "gpu_mib_base_loaded": round(mem_base, 1), "gpu_mib_after_free": round(mem_after_free, 1),
        "eval": {"arms": {k: {x: v[x] for x in ("successes", "rate", "truncated", "mean_tokens")}
                          for k, v in report["arms"].items()},
                 "baseline": report["baseline"]["arm"], "gate_line": report["gate"]["line"],
                 "critic_agreement": {k: round(v["agreement"], 3) for k, v in report["critic_agreement"].items()},
                 "ifeval": {k: v["metrics"] for k, v in ife["arms"].items()}, "seconds": round(eval_s, 2)},
        "events": events, "wall_seconds": round(time.time() - t0, 2),
    }
    (out / "gpu_check_sft.json").write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0 if result["all_passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
