"""A test pipeline: the SFT fixture's data steps, the real SFT/eval nodes, then the real preference/DPO nodes.

Used by tests/integration/test_preferences_pipeline.py through the CLI
(``PYTHONPATH=tests/integration python -m runner run --config CFG``, pipeline
``pref_fixture_pipeline:pipeline``), and ``random_model_pipeline`` (fixture ``candidates`` from the
seed instructions; benchmarks/gpu_dpo_runner.yaml on tiny-random-qwen2). Not for production runs.
"""
from __future__ import annotations

from sft_fixture_pipeline import heldout, merge, prepare_model

from phases.steps.preferences import (CANDIDATES_DEFAULTS, PREFERENCE_NODES, _clean, _gen_params, _load,
                                      _model_ref)
from phases.steps.train_eval import TRAIN_EVAL_NODES
from runner import Pipeline, gate, step
from runner.errors import DataError
from runner.pipeline import derive_seed
from state.files import atomic_write_json, write_jsonl

pipeline = Pipeline("pref-fixture", [prepare_model, heldout, merge, gate("qc_scale", policy="auto"), *TRAIN_EVAL_NODES,
                                     *PREFERENCE_NODES],
                    goal="Test the preference and DPO nodes on fixture data.")


# ---- a variant for random-weight models (benchmarks/gpu_dpo_runner.yaml on tiny-random-qwen2) ----
# A random model writes no instruction that the real instruction parser keeps (numbered, a verb, a
# full sentence), so the real `candidates` step cannot run on it. This fixture `candidates` takes
# the configured seed instructions as the fresh prompts and samples k responses per prompt from
# base + SFT adapter with the real step's loader, framing, sampling and per-sample seeds (chat
# control-token text that random weights emit is blanked, or the DPO step's guard would refuse the
# pair); every later node (pairs, qc_pairs, dpo, evaluate_dpo, dpo_gate) is the real one.


@step("candidates", inputs=["prepare_model", "heldout", "merge", "sft"],
      outputs=["prompts.jsonl", "candidates.jsonl", "manifest.json"], params=CANDIDATES_DEFAULTS, version="1")
def seed_candidates(ctx):
    """Fixture: seed instructions as prompts (refusal_expected from the family), k real SFT samples each."""
    from phases.models.registry import PROFILES
    from phases.prompts import response_prompt

    p = dict(ctx.params)
    prompts = [{"id": f"seed-{fam}-{i}", "family": fam, "instruction": inst,
                "refusal_expected": bool(p["families"].get(fam, {}).get("refusal_expected"))}
               for fam in sorted(p["seeds"]) for i, inst in enumerate(p["seeds"][fam])][: int(p["n_prompts"])]
    if not prompts:
        raise DataError("fixture candidates: params.candidates.seeds has no instruction")
    model, dev = _load(ctx, _model_ref(ctx), p["batch_size"], ctx.input("sft") / "adapter", "base + SFT adapter")
    params, seed_base, k = _gen_params(p["sampling"]), ctx.seed_for("cand"), int(p["k"])
    jobs = [{"prompt_id": c["id"], "j": j, "instruction": c["instruction"]} for c in prompts for j in range(k)]

    control = PROFILES[model.model_id].control_tokens if model.model_id in PROFILES else ()

    def strip_control(text: str) -> str:  # random weights emit chat control tokens; the DPO guard refuses them
        for tok in control:
            text = text.replace(tok, " ")
        return text

    def work(batch, info):
        seeds = [derive_seed(seed_base, b["prompt_id"], b["j"]) for b in batch]
        gens = model.generate([response_prompt(b["instruction"]) for b in batch], params, seeds)
        return [{"prompt_id": b["prompt_id"], "index": b["j"], "seed": s, "raw": g.text,
                 "response": _clean(strip_control(g.text)), "tokens": g.n_tokens, "hit_token_limit": g.hit_token_limit}
                for b, s, g in zip(batch, seeds, gens)]

    cands = ctx.ledger("samples").run(jobs, p["batch_size"], work)
    write_jsonl(ctx.out_dir / "prompts.jsonl", prompts)
    write_jsonl(ctx.out_dir / "candidates.jsonl", cands)
    atomic_write_json(ctx.out_dir / "manifest.json", {"schema": "candidates/v1", "fixture": "seed instructions as prompts",
                                                      "counts": {"prompts": len(prompts), "candidates": len(cands)},
                                                      "device": dev})
    return {"headline": f"fixture: {len(prompts)} seed prompts x {k} samples = {len(cands)} candidates ({dev})"}


random_model_pipeline = Pipeline(
    "pref-fixture-random-model",
    [prepare_model, heldout, merge, gate("qc_scale", policy="auto"), *TRAIN_EVAL_NODES,
     seed_candidates, *[n for n in PREFERENCE_NODES if getattr(n, "__step__", n).name != "candidates"]],
    goal="Run the DPO nodes through runner on a random-weight model (GPU smoke run).")
