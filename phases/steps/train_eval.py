"""Stage-1 training and evaluation nodes: step ``sft``, step ``evaluate``, gate ``sft_gate``.

Not runnable on its own; ``phases/pipeline.py`` appends ``TRAIN_EVAL_NODES`` after the data nodes
(which must provide steps ``prepare_model``, ``heldout`` and ``merge``). Run the stage with
``python -m runner run --config <stage run config>``. Params and outputs: specs/sft-evaluation.md.

- ``sft`` (inputs prepare_model, merge): refuses to start without a passed QC summary and a
  complete dataset manifest, trains a LoRA/QLoRA adapter (resumable from trainer checkpoints in
  ``ctx.work_dir``) and writes ``adapter/``, ``TRAINING_SUCCESS``, ``training_manifest.json``,
  ``loss.png``.
- ``evaluate`` (inputs prepare_model, heldout, sft): base arms and the trained arm on the same
  held-out items, one model in memory at a time, every generation batch recorded in the ledger;
  writes ``eval.json``, ``items.jsonl``, ``summary.txt``, ``per_type.png``.
- gate ``sft_gate``: passes when McNemar p < alpha overall (an improvement) and no protected
  type (safety, format) regressed significantly after BH; evidence = summary + fixed-seed items.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from phases.evaluate import EVAL_DEFAULTS
from phases.models.devices import DeviceError, resolve_placement
from phases.pieces import CRITIC_PAIR, IFEVAL, STATS, builder_param, builder_piece
from phases.sft import SFT_DEFAULTS
from phases.steps import sizes
from runner import gate, step
from runner.errors import ConfigError
from runner.pipeline import GateCheck
from state.files import (atomic_write_json, atomic_write_text, hash_tree, read_jsonl, sha256_file,
                         tree_digest, write_jsonl)

__all__ = ["sft", "evaluate", "sft_gate", "TRAIN_EVAL_NODES"]


def _git_sha() -> str:
    from phases.models.loader import loader_version

    return loader_version()


def _tree_sha256(root: Path) -> str:
    """A directory's content hash, the same digest the runner records for step outputs."""
    return tree_digest(hash_tree(Path(root)))


@step(inputs=["prepare_model", "merge"],
      outputs=["adapter", "TRAINING_SUCCESS", "training_manifest.json", "loss.png"],
      params=dict(SFT_DEFAULTS), version="1", uses=[builder_piece("instruction_response")],
      gpu=True, size=sizes.sft_examples)
def sft(ctx):
    """SFT (QLoRA on CUDA, LoRA on CPU) on the merged, QC-passed data; resumes from checkpoints."""
    from phases.plots import plot_loss
    from phases.sft import check_merge_inputs, model_ref, run_sft

    # the precondition, before any model is loaded
    ins = check_merge_inputs(ctx.input("merge"), require_qc_pass=bool(ctx.params["require_qc_pass"]))
    qc_passed = ins["qc"].get("thresholds_passed") is True
    if not qc_passed:
        ctx.log("QC DID NOT PASS (" + "; ".join(map(str, ins["qc"].get("failed_reasons") or [])) + "); training "
                "anyway because require_qc_pass is false (demo profiles only). These results show the "
                "machinery, not a valid experiment.", kind="qc_override")
    ref = model_ref(ctx.input("prepare_model") / "model.json")
    records = read_jsonl(ins["dataset"])
    seed = ctx.seed % (2 ** 32)
    t0 = time.time()
    res = run_sft(records, ref, dict(ctx.params), ctx.work_dir, ctx.out_dir, seed, ctx.log)
    if res["gpu_seconds"]:
        ctx.add_cost("gpu_s", res["gpu_seconds"])
    plot_loss(res["loss_curve"], ctx.out_dir / "loss.png", title=f"SFT loss ({res['model_provenance'].get('model_id')})")
    sha = _git_sha()
    manifest = {
        "schema": "training_manifest/v1",
        "git_sha": sha,
        "dataset": {"path": str(ins["dataset"]), "sha256": sha256_file(ins["dataset"]), "records": len(records)},
        "qc_summary": {"path": str(ins["qc_summary"]), "thresholds_passed": qc_passed,
                       "override": None if qc_passed else "require_qc_pass=false (demo profile)"},
        "data_manifest": {"path": str(ins["manifest"]), "sha256": sha256_file(ins["manifest"])},
        "model_ref": ref,
        "hyperparameters": {**dict(ctx.params), "seed": seed},
        "format": {"prompt": "Instruction: {instruction}\\nResponse:", "completion": " {response}<eos>",
                   "eos_token": res["model_provenance"].get("eos_token"), "loss": "response tokens + eos only"},
        "adapter": {"path": "adapter", "sha256": _tree_sha256(ctx.out_dir / "adapter")},
        "eval_link": "the evaluate step of this run (eval.json)",
        "wall_seconds": round(time.time() - t0, 2),
        **{k: res[k] for k in ("device", "quantization", "loaded_in_4bit", "trainer", "gradient_checkpointing", "examples",
                               "resumed_from", "checkpoints", "best_checkpoint", "metrics", "loss_curve",
                               "gpu_seconds", "model_provenance")},
    }
    atomic_write_json(ctx.out_dir / "training_manifest.json", manifest)
    atomic_write_json(ctx.out_dir / "TRAINING_SUCCESS", {
        "adapter_path": "adapter", "adapter_sha256": manifest["adapter"]["sha256"], "git_sha": sha,
        "note": "adapter_path is relative to this step's output directory"})
    m = res["metrics"]
    dev_loss = f", dev loss {m['eval_loss']:.3f}" if m.get("eval_loss") is not None else ""
    resumed = f", resumed from step {res['resumed_from']['step']}" if res["resumed_from"] else ""
    return {"headline": f"train loss {m['train_loss']:.3f}{dev_loss}, {m['global_step']} steps on "
                        f"{res['examples']['train']} examples ({res['device']}){resumed}",
            "train_loss": round(m["train_loss"], 4) if m["train_loss"] is not None else None,
            "eval_loss": round(m["eval_loss"], 4) if m.get("eval_loss") is not None else None,
            "steps": m["global_step"], "examples": res["examples"]["train"], "device": res["device"],
            "resumed_from_step": (res["resumed_from"] or {}).get("step")}


def _arms(params) -> list[str]:
    from phases.evaluate import BASE_ARMS

    arms = list(params["arms"])
    bad = [a for a in arms if a not in BASE_ARMS]
    if not arms or bad:
        raise ConfigError(f"params.evaluate.arms = {arms!r}: must be a non-empty subset of {sorted(BASE_ARMS)}")
    return arms


@step(inputs=["prepare_model", "heldout", "sft"],
      outputs=["eval.json", "items.jsonl", "summary.txt", "per_type.png"],
      params=dict(EVAL_DEFAULTS), version="1", uses=[builder_param("arms"), builder_piece("instruction_response"),
                                                     CRITIC_PAIR, IFEVAL, STATS],
      gpu=True, size=sizes.eval_items)
def evaluate(ctx):
    """Paired evaluation of the best base framing vs the trained adapter (checkers + critic + IFEval)."""
    from phases import evaluate as ev
    from phases.models.loader import load_model
    from phases.models.registry import PROFILES
    from phases.plots import plot_per_type
    from phases.sft import model_ref

    p = {**EVAL_DEFAULTS, **dict(ctx.params)}
    base_arms = _arms(p)
    items = ev.load_heldout(ctx.input("heldout") / "heldout.jsonl", p["max_items"])
    model_json = ctx.input("prepare_model") / "model.json"
    ref = model_ref(model_json)
    adapter = ctx.input("sft") / "adapter"
    ev.check_adapter_config(adapter, ev.expected_model_id(ref), Path(ref))  # before any load
    try:
        dev, quant = resolve_placement(p["device"], p["quantization"], "params.evaluate.")
    except DeviceError as e:
        raise ConfigError(str(e)) from e
    bs = p["batch_size"]
    t0 = time.time()

    def load_base(what: str = "base model"):
        ctx.log(f"loading the {what} ({ref}) on {dev}, quantization {quant}", kind="eval_model_load")
        return load_model(ref, device=dev, quantization=quant, backend="hf", batch_size=bs, run_sentinels=False)

    def load_trained():
        m = load_base("base model + adapter")
        ev.attach_adapter(m, adapter)
        return m

    instructions = [r["instruction"] for r in items]
    pairs_of = lambda arm, outs: [{"instruction": r["instruction"], "response": o["response"]}  # noqa: E731
                                  for r, o in zip(items, outs)]
    gens: dict[str, list] = {}
    crit: dict[str, list] = {}
    thr = p["critic_threshold"]

    def gen(slot, arm, xs, max_new, ledger):
        return ctx.ledger(ledger).run(xs, bs, lambda b, info: ev.generate_batch(slot.get(), arm, b, max_new))

    # 1) base model: base arms, their critic verdicts, and IFEval for the best base framing
    base = ev.ModelSlot(load_base)
    for arm in base_arms:
        gens[arm] = gen(base, arm, instructions, p["max_new_tokens"], f"gen-{arm}")
    if p["critic"]:
        for arm in base_arms:
            crit[arm] = ctx.ledger(f"critic-{arm}").run(pairs_of(arm, gens[arm]), bs,
                                                        lambda b, info: ev.critic_batch(base.get(), b, thr))
    scored = {a: [{**g, **ev.score_item(r, g["response"], g["truncated"])} for r, g in zip(items, gens[a])]
              for a in base_arms}
    best = max(base_arms, key=lambda a: (sum(o["success"] for o in scored[a]), -base_arms.index(a)))
    prompts, if_outs = [], {}
    if p["ifeval_limit"] != 0:
        from phases.ifeval import load_prompts

        prompts = load_prompts()
        prompts = prompts if p["ifeval_limit"] < 0 else prompts[: p["ifeval_limit"]]
        if_outs[f"base:{best}"] = gen(base, best, [x.prompt for x in prompts], p["ifeval_max_new_tokens"], f"ifeval-{best}")
    base.free()
    # 2) base + adapter: the trained arm; the critic judges it with the adapter disabled (base as judge)
    trained = ev.ModelSlot(load_trained)
    gens["trained"] = gen(trained, "trained", instructions, p["max_new_tokens"], "gen-trained")
    if prompts:
        if_outs["trained"] = gen(trained, "trained", [x.prompt for x in prompts], p["ifeval_max_new_tokens"], "ifeval-trained")
    if p["critic"]:
        def judge_trained(b, info):
            m = trained.get()
            with m.model.disable_adapter():
                return ev.critic_batch(m, b, thr)
        crit["trained"] = ctx.ledger("critic-trained").run(pairs_of("trained", gens["trained"]), bs, judge_trained)
    trained.free()
    scored["trained"] = [{**g, **ev.score_item(r, g["response"], g["truncated"])} for r, g in zip(items, gens["trained"])]
    for a in crit:
        for o, c in zip(scored[a], crit[a]):
            o["critic"] = c

    seed = ctx.seed_for("bootstrap") % (2 ** 32)
    prof = PROFILES.get(ref)
    meta = {"model_ref": ref, "stand_in_note": prof.stand_in_note if prof else "",
            "model_json_sha256": sha256_file(model_json), "adapter_sha256": _tree_sha256(adapter),
            "heldout_sha256": sha256_file(ctx.input("heldout") / "heldout.jsonl"), "device": dev,
            "quantization": quant, "git_sha": _git_sha(), "batch_size": bs, "critic": bool(p["critic"]),
            "critic_threshold": thr, "critic_judge": "base model (adapter disabled for the trained arm)"}
    report = ev.build_report(items, scored, base_arms, p, seed, meta)
    report["ifeval"] = ev.ifeval_report(prompts, if_outs, p, seed) if prompts else {"enabled": False}
    atomic_write_json(ctx.out_dir / "eval.json", report)
    rows = []
    for i, r in enumerate(items):
        rows.append({"id": r["id"], "family": r["family"], "instruction": r["instruction"],
                     "instruction_id_list": r["instruction_id_list"], "kwargs": r["kwargs"],
                     "arms": {a: scored[a][i] for a in scored}})
    write_jsonl(ctx.out_dir / "items.jsonl", rows)
    atomic_write_text(ctx.out_dir / "summary.txt", _summary_text(report))
    plot_per_type(report["per_type_arms"], list(report["arms"]), ctx.out_dir / "per_type.png",
                  title=f"Held-out success per family ({ref})")
    if dev.startswith("cuda"):
        ctx.add_cost("gpu_s", round(time.time() - t0, 2))
    ov = report["comparison"]["overall"]
    rates = report["arms"]
    head = (f"{report['gate']['line'].split(':')[0]}: trained {100 * rates['trained']['rate']:.1f}% vs {best} "
            f"{100 * rates[best]['rate']:.1f}%, lift {100 * ov['lift']:+.1f} pts, p={ov['mcnemar']['p_value']:.3g}")
    out = {"headline": head, "n": len(items), "rates": {a: round(b["rate"], 3) for a, b in report["arms"].items()},
           "baseline": best, "lift": round(ov["lift"], 3), "p": float(f"{ov['mcnemar']['p_value']:.3g}"),
           "truncated": {a: b["truncated"] for a, b in report["arms"].items()}, "go": report["gate"]["go"]}
    if prompts:
        out["ifeval_prompt_strict"] = {a: round(v["metrics"]["prompt_level_strict_acc"], 3)
                                       for a, v in report["ifeval"]["arms"].items()}
    return out


def _summary_text(report: dict) -> str:
    md = report["metadata"]
    lines = [f"Evaluation of {md['model_ref']} base vs trained on {md['n_items']} held-out items "
             f"(greedy, max_new_tokens={md['decoding']['max_new_tokens']}, same stop rules for every arm)"]
    if md.get("stand_in_note"):
        lines.append(md["stand_in_note"])
    lines.append(f"Success = {md['success_definition']}.")
    lines.append("arm          success          95% Wilson CI      truncated  critic agreement")
    for a, b in report["arms"].items():
        ag = report["critic_agreement"].get(a)
        lines.append(f"{a:<12} {b['successes']:>4}/{b['n']:<4} {100 * b['rate']:5.1f}%   "
                     f"{100 * b['wilson_ci'][0]:5.1f}-{100 * b['wilson_ci'][1]:5.1f}%      {b['truncated']:>4}     "
                     + (f"{100 * ag['agreement']:.1f}% (kappa {ag['cohens_kappa']:+.2f})" if ag else "n/a"))
    lines.append(f"Baseline that counts: base arm '{report['baseline']['arm']}' (best base framing).")
    lines.append("")
    lines.append("By family:")
    lines += report["summary_text"]["by_family"].splitlines()[:-1]
    lines.append("By constraint type:")
    lines += report["summary_text"]["by_constraint"].splitlines()[:-1]
    ife = report.get("ifeval") or {}
    if ife.get("enabled"):
        lines.append(f"IFEval ({ife['n_prompts']} prompts, max_new_tokens={ife['max_new_tokens']}):")
        for a, v in ife["arms"].items():
            m = v["metrics"]
            lines.append(f"  {a}: prompt strict {m['prompt_level_strict_acc']:.3f}, inst strict "
                         f"{m['inst_level_strict_acc']:.3f}, prompt loose {m['prompt_level_loose_acc']:.3f}, "
                         f"inst loose {m['inst_level_loose_acc']:.3f}, truncated {v['truncated']}")
    lines.append(report["gate"]["line"])
    return "\n".join(lines) + "\n"


def _eval_report(gctx) -> dict:
    return json.loads((gctx.output("evaluate") / "eval.json").read_text(encoding="utf-8"))


def _sft_gate_check(gctx) -> GateCheck:
    rep = _eval_report(gctx)
    ov = rep["comparison"]["overall"]
    summary = {"baseline": rep["baseline"]["arm"], "rates": {a: round(b["rate"], 4) for a, b in rep["arms"].items()},
               "lift": ov["lift"], "lift_ci": ov["lift_ci"], "p_value": ov["mcnemar"]["p_value"],
               "n01": ov["discordant"]["n01"], "n10": ov["discordant"]["n10"], "line": rep["gate"]["line"]}
    return GateCheck(passed=bool(rep["gate"]["go"]), summary=summary, reasons=list(rep["gate"]["reasons"]))


def _sft_gate_evidence(gctx) -> dict:
    rep = _eval_report(gctx)
    rows = read_jsonl(gctx.output("evaluate") / "items.jsonl")
    sample = random.Random(gctx.run_seed).sample(rows, min(6, len(rows)))
    return {"summary": (gctx.output("evaluate") / "summary.txt").read_text(encoding="utf-8"),
            "gate": rep["gate"], "samples": sample}


sft_gate = gate("sft_gate", check=_sft_gate_check, evidence=_sft_gate_evidence, policy="review",
                criteria=["Trained beats the best base framing: McNemar p < 0.01 overall, an improvement",
                          "No significant (BH-adjusted) regression on protected types (safety, format)",
                          "Confidence intervals are narrow enough to act on; truncations are rare"],
                description="Proceed past stage-1 SFT only with an honest, significant improvement.")

TRAIN_EVAL_NODES: list = [sft, evaluate, sft_gate]
