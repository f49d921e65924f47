"""The multi-turn stage's pipeline ``phases.multiturn_steps:pipeline`` (named by phases/stages/multiturn.yaml).

    parent_model -> prepare_model -> mt_heldout -> mt_data -> [mt_qc] -> mt_sft -> mt_evaluate
    -> regression -> [regression_gate] -> [mt_gate]

Launch: ``runner init --config phases/stages/multiturn.yaml --from-run <stage-1 run>`` then
``runner resume --detach`` (demo: ``runner run --config phases/stages/demo-multiturn.yaml``).
Spec: specs/stages.md ("Multi-turn"). Pieces: `phases/multiturn.py`; chaining: `phases/chain.py`.

- ``mt_heldout``: the held-out conversation plans, made FIRST, from ``multiturn.heldout_seed``
  (not the run seed). ``heldout.jsonl`` (plans), ``manifest.json``.
- ``mt_data``: training plans from the run seed, never reusing a held-out turn-1 request; the
  model writes every assistant turn in the transcript framing, one turn at a time (one batch
  ledger per turn position, per-item seeds: a killed and resumed run is byte-identical);
  every turn is checked; a conversation is kept when every checked turn passes.
  ``conversations.jsonl`` (all, with answers and verdicts), ``sft.jsonl`` (kept:
  ``{"id", "turns": [[user, assistant], ...]}``), ``qc.json``, ``manifest.json``. Test hook
  ``CAI_TEST_KEEP_ALL=1`` keeps every complete conversation (recorded in qc.json and the manifest);
  ``CAI_TEST_MT_BATCH_DELAY_S`` sleeps after each generation batch (crash tests; outputs unchanged).
- gate ``mt_qc``: kept >= ``multiturn.min_kept``.
- ``mt_sft``: SFT (phases/sft.py) on the kept conversations, loss on the assistant turns only
  (`phases.multiturn.encode_conversation`).
- ``mt_evaluate``: base (this stage's starting model) vs base + adapter on the held-out plans,
  greedy, each arm answering on its own history; paired per conversation, per turn position
  and per check kind (remembered or not). ``eval.json``, ``items.jsonl``, ``summary.txt``.
- ``regression`` / ``regression_gate``: the earlier stages' single-turn held-out sets and IFEval
  re-tested with the multi-turn adapter (phases/regression.py).
- gate ``mt_gate``: the report's GO line (phases.multiturn.paired_report).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from phases import evaluate as ev
from phases.chain import _regression_nodes, parent_model, prepare_model, reduce_parent
from phases.models.backends.base import GenerationParams
from phases.models.loader import load_model
from phases.multiturn import (MultiTurnConfig, build_plans, encode_conversation, paired_report, score_conversation,
                              validate_multiturn)
from phases.prompts import TRANSCRIPT_HEADER, transcript_prompt
from phases.sft import SFT_DEFAULTS, model_ref, run_sft
from phases.stage_config import load_stage
from phases.steps import common
from phases.steps.config import RUNNER_KEYS, stage_keys
from phases.steps.model import model_info, open_model
from runner import Pipeline, gate, step
from runner.errors import ConfigError, DataError
from runner.pipeline import GateCheck, derive_seed
from state.files import atomic_write_json, atomic_write_text, hash_tree, sha256_file, tree_digest

KEEP_ALL_ENV = "CAI_TEST_KEEP_ALL"
DELAY_ENV = "CAI_TEST_MT_BATCH_DELAY_S"  # seconds slept after each generation batch (crash tests only)
MT_EVAL_DEFAULTS = {"device": "auto", "max_new_tokens": 96, "batch_size": 8, "max_items": 0, "alpha": 0.01}


def expand_multiturn_config(raw: dict, path: Any) -> dict:
    """``expand_config`` hook: shared stage keys (load_stage), the ``multiturn`` section, per-step params."""
    if path is None:
        raise ConfigError("the multi-turn pipeline needs a stage file (e.g. --config phases/stages/multiturn.yaml)")
    path = Path(path)
    allowed = stage_keys() | RUNNER_KEYS | {"include", "multiturn"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown}; allowed: {sorted(allowed)}")
    stage = load_stage(path, ignore_keys=(RUNNER_KEYS - {"seed"}) | {"multiturn"})
    mt = validate_multiturn(raw.get("multiturn"), str(path))
    params = {k: dict(v) for k, v in (raw.get("params") or {}).items()}
    for name in ("mt_heldout", "mt_data", "parent_model"):
        if name in params:
            raise ConfigError(f"{path}: params.{name} comes from the stage keys (multiturn, generation, ...) or "
                              "--from-run; set it there")
    d = stage.to_dict()
    seeds = {f: list(stage.seeds[f]) for f in stage.enabled_families}
    plan_cfg = mt.to_dict()
    params["mt_heldout"] = {"multiturn": plan_cfg, "seeds": seeds}
    params["mt_data"] = {"multiturn": plan_cfg, "seeds": seeds, "responses": d["generation"]["responses"],
                         "batch_size": d["generation"]["batch_size"]}
    params["parent_model"] = {"parent": reduce_parent(raw.get("from_run"))}
    out = {k: v for k, v in raw.items() if k in RUNNER_KEYS}
    out.update(seed=stage.seed, params=params, stage={"name": stage.stage.name, "description": stage.stage.description})
    return out


def _header(mt: dict) -> str:
    return TRANSCRIPT_HEADER if mt["header"] is None else mt["header"]


def _cut(text: str, labels: tuple[str, str]) -> str:
    """An answer ends at a forged turn label (the stop string usually catches it first)."""
    t = "\n" + text
    for lab in labels:
        i = t.find(f"\n{lab}:")
        if i >= 0:
            t = t[:i]
    return t[1:].strip()


def generate_turns(ctx, model, plans: list[dict], mt: dict, gen, seed_base: int, ledger: str, batch_size: int) -> dict:
    """Assistant answers for every plan, one turn position at a time (one ledger per position).

    Turn t's prompt holds the plan's user turns 1..t and the model's own answers 1..t-1. A plan
    whose answer came back empty stops there (its later turns are answered ""). Returns
    ``{plan id: [answer per turn]}``.
    """
    labels = (mt["user_label"], mt["assistant_label"])
    params = gen
    delay = float(os.environ.get(DELAY_ENV) or 0)
    answers: dict[str, list[str]] = {p["id"]: [] for p in plans}
    header = _header(mt)
    for t in range(max(p["n_turns"] for p in plans)):
        active = [p for p in plans if p["n_turns"] > t and all(answers[p["id"]])]
        items = [{"id": p["id"], "prompt": transcript_prompt(
            [(p["turns"][i]["user"], answers[p["id"]][i]) for i in range(t)], p["turns"][t]["user"], header, *labels)}
            for p in active]

        def work(batch, info, t=t):
            gens = model.generate([b["prompt"] for b in batch], params, [derive_seed(seed_base, b["id"], t) for b in batch])
            if delay:  # test knob: widens the window in which a crash test kills the runner mid-step
                time.sleep(delay)
            return [{"id": b["id"], "answer": _cut(g.text, labels), "tokens": g.n_tokens,
                     "hit_token_limit": g.hit_token_limit} for b, g in zip(batch, gens)]

        outs = ctx.ledger(f"{ledger}-turn{t + 1}").run(items, batch_size, work) if items else []
        for o in outs:
            answers[o["id"]].append(o["answer"])
        for p in plans:
            if p["n_turns"] > t and len(answers[p["id"]]) == t:
                answers[p["id"]].append("")
    return answers


@step(inputs=["prepare_model"], outputs=["heldout.jsonl", "manifest.json"], version="1",
      params={"multiturn": {}, "seeds": {}})
def mt_heldout(ctx):
    """Held-out conversation plans, made first, from their own seed."""
    mt = MultiTurnConfig(**ctx.params["multiturn"])
    plans = build_plans(mt, ctx.params["seeds"], mt.heldout_conversations, derive_seed(mt.heldout_seed, "mt-heldout"),
                        "mt-ho")
    sha = common.write_records(ctx.out_dir / "heldout.jsonl", plans)
    by = {}
    for p in plans:
        by[p["pattern"]] = by.get(p["pattern"], 0) + 1
    info = model_info(ctx)
    common.dump(ctx.out_dir / "manifest.json", common.session_manifest(
        ctx, "mt_heldout", info, {"heldout.jsonl": sha}, {"conversations": len(plans), "by_pattern": by},
        heldout_seed=mt.heldout_seed))
    return {"conversations": len(plans), "by_pattern": by, "sha256": sha}


@step(inputs=["prepare_model", "mt_heldout"], outputs=["conversations.jsonl", "sft.jsonl", "qc.json", "manifest.json"],
      version="1", params={"multiturn": {}, "seeds": {}, "responses": {}, "batch_size": 8})
def mt_data(ctx):
    """Training conversations: the model answers turn by turn; every turn is checked."""
    p = ctx.params
    mt = MultiTurnConfig(**p["multiturn"])
    held = common.read_records(ctx.input("mt_heldout") / "heldout.jsonl")
    plans = build_plans(mt, p["seeds"], mt.conversations, ctx.seed, "mt", exclude_requests=[h["request"] for h in held])
    model, info = open_model(ctx, p["batch_size"])
    gen = dict(p["responses"])
    gen["stop"] = [f"\n{mt.user_label}:", f"\n{mt.assistant_label}:"]
    answers = generate_turns(ctx, model, plans, p["multiturn"], common.sampling(gen), ctx.seed, "mt", p["batch_size"])
    keep_all = os.environ.get(KEEP_ALL_ENV) == "1"
    rows, kept = [], []
    for plan in plans:
        resp = answers[plan["id"]]
        score = score_conversation(plan, resp)
        complete = all(a.strip() for a in resp)
        keep = complete and (score["success"] or keep_all)
        rows.append({**plan, "answers": resp, "score": score, "kept": keep})
        if keep:
            kept.append({"id": plan["id"], "turns": [[t["user"], a] for t, a in zip(plan["turns"], resp)]})
    conv_sha = common.write_records(ctx.out_dir / "conversations.jsonl", rows)
    sft_sha = common.write_records(ctx.out_dir / "sft.jsonl", kept)
    turns = [t for r in rows for t in r["score"]["turns"] if t["scored"]]
    rem_t = sum(r["score"]["remembered_total"] for r in rows)
    qc = {"counts": {"conversations": len(rows), "complete": sum(all(a.strip() for a in r["answers"]) for r in rows),
                     "passed_every_turn": sum(r["score"]["success"] for r in rows), "kept": len(kept),
                     "scored_turns": len(turns), "turns_passed": sum(t["success"] for t in turns),
                     "remembered_checks": rem_t,
                     "remembered_passed": sum(r["score"]["remembered_passed"] for r in rows)},
          "min_kept": mt.min_kept, "test_keep_all": keep_all}
    qc["thresholds_passed"] = len(kept) >= mt.min_kept
    qc["failed_reasons"] = [] if qc["thresholds_passed"] else [f"kept {len(kept)} < multiturn.min_kept {mt.min_kept}"]
    atomic_write_json(ctx.out_dir / "qc.json", qc, indent=2)
    common.dump(ctx.out_dir / "manifest.json", common.session_manifest(
        ctx, "mt_data", info, {"conversations.jsonl": conv_sha, "sft.jsonl": sft_sha}, qc["counts"]))
    return {**qc["counts"], "thresholds_passed": qc["thresholds_passed"]}


def _mt_qc_check(gctx) -> GateCheck:
    import json

    qc = json.loads((gctx.output("mt_data") / "qc.json").read_text(encoding="utf-8"))
    return GateCheck(passed=bool(qc["thresholds_passed"]), summary=qc["counts"], reasons=qc["failed_reasons"])


mt_qc = gate("mt_qc", check=_mt_qc_check, policy="review+human",
             criteria=["Enough conversations pass every turn's checks (multiturn.min_kept)",
                       "Remembered constraints and facts are honoured in later turns of the kept conversations"],
             description="Multi-turn data QC before training on it.")


def _encoder(header: str, labels: tuple[str, str]):
    def encode_records(loaded, records: list[dict], max_seq_len: int):
        out, counts = [], {"records": len(records), "kept": 0, "dropped_too_long": 0, "dropped_empty": 0}
        for r in records:
            turns = [tuple(t) for t in r["turns"]]
            if any(not a.strip() for _, a in turns):
                counts["dropped_empty"] += 1
                continue
            ex = encode_conversation(loaded.encode, header, turns, *labels)
            if len(ex["input_ids"]) > max_seq_len:
                counts["dropped_too_long"] += 1
                continue
            out.append({"input_ids": ex["input_ids"], "labels": ex["labels"]})
        counts["kept"] = len(out)
        return out, counts
    return encode_records


@step(inputs=["prepare_model", "mt_data"], outputs=["adapter", "TRAINING_SUCCESS", "training_manifest.json"],
      params={**SFT_DEFAULTS}, version="1")
def mt_sft(ctx):
    """SFT on the kept conversations, loss on the assistant turns only."""
    qc = common.load_json(ctx.input("mt_data") / "qc.json")
    if not qc["thresholds_passed"] and ctx.params["require_qc_pass"]:
        raise DataError(f"{ctx.input('mt_data') / 'qc.json'}: QC did not pass ({qc['failed_reasons']}); not training")
    mt = common.load_json(ctx.input("mt_data") / "manifest.json")["params"]["multiturn"]
    records = common.read_records(ctx.input("mt_data") / "sft.jsonl")
    if not records:
        raise DataError(f"{ctx.input('mt_data') / 'sft.jsonl'} is empty: no conversation was kept; see qc.json")
    ref = model_ref(ctx.input("prepare_model") / "model.json")
    res = run_sft(records, ref, dict(ctx.params), ctx.work_dir, ctx.out_dir, ctx.seed % (2 ** 32), ctx.log,
                  encode_records=_encoder(_header(mt), (mt["user_label"], mt["assistant_label"])))

    adapter_sha = tree_digest(hash_tree(ctx.out_dir / "adapter"))
    info = model_info(ctx)
    atomic_write_json(ctx.out_dir / "training_manifest.json", {
        "schema": "training_manifest/v1", "git_sha": common.git_info()["commit"], "model_ref": ref,
        "lineage": info.get("lineage", []),
        "dataset": {"path": str(ctx.input("mt_data") / "sft.jsonl"), "sha256": sha256_file(ctx.input("mt_data") / "sft.jsonl"),
                    "records": len(records)},
        "format": {"framing": "phases.prompts.transcript_prompt", "loss": "assistant turns only, each answer plus "
                   "the following turn label (the stop string)"},
        "hyperparameters": dict(ctx.params), "adapter": {"path": "adapter", "sha256": adapter_sha},
        **{k: res[k] for k in ("device", "quantization", "trainer", "kernels", "compile", "attention", "decoder_autocast", "gradient_checkpointing",
                               "examples", "resumed_from", "metrics", "loss_curve")}})
    atomic_write_json(ctx.out_dir / "TRAINING_SUCCESS", {"adapter_path": "adapter", "adapter_sha256": adapter_sha,
                                                         "git_sha": common.git_info()["commit"]})
    if res["gpu_seconds"]:
        ctx.add_cost("gpu_s", res["gpu_seconds"])
    m = res["metrics"]
    return {"train_loss": round(m["train_loss"], 4) if m["train_loss"] is not None else None,
            "steps": m["global_step"], "examples": res["examples"]["train"]}


@step(inputs=["prepare_model", "mt_heldout", "mt_data", "mt_sft"], outputs=["eval.json", "items.jsonl", "summary.txt"],
      params=dict(MT_EVAL_DEFAULTS), version="1")
def mt_evaluate(ctx):
    """Paired evaluation per turn and per conversation: this stage's starting model vs + adapter."""
    import torch

    p = {**MT_EVAL_DEFAULTS, **dict(ctx.params)}
    plans = common.read_records(ctx.input("mt_heldout") / "heldout.jsonl")
    if p["max_items"] > 0:
        plans = plans[: p["max_items"]]
    mt = common.load_json(ctx.input("mt_data") / "manifest.json")["params"]["multiturn"]
    ref = model_ref(ctx.input("prepare_model") / "model.json")
    adapter = ctx.input("mt_sft") / "adapter"
    dev = p["device"] if p["device"] != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    greedy = GenerationParams(max_new_tokens=int(p["max_new_tokens"]), do_sample=False, repetition_penalty=1.0,
                              stop=(f"\n{mt['user_label']}:", f"\n{mt['assistant_label']}:"))
    t0 = time.time()
    answers, scores = {}, {}
    for arm in ("base", "trained"):
        def load(arm=arm):
            m = load_model(ref, device=dev, backend="hf", batch_size=p["batch_size"], run_sentinels=False)
            if arm == "trained":
                ev.attach_adapter(m, adapter)
            return m
        slot = ev.ModelSlot(load)

        class _Lazy:  # loads on the first batch that needs it, so a fully recorded ledger loads nothing
            def generate(self, *a, **k):
                return slot.get().generate(*a, **k)

        answers[arm] = generate_turns(ctx, _Lazy(), plans, mt, greedy, ctx.seed, f"eval-{arm}", p["batch_size"])
        slot.free()
        scores[arm] = [score_conversation(pl, answers[arm][pl["id"]]) for pl in plans]
    report = paired_report(plans, scores["base"], scores["trained"], seed=ctx.seed_for("bootstrap") % (2 ** 32),
                           alpha=float(p["alpha"]))
    report["metadata"] = {"model_ref": ref, "device": dev, "n_conversations": len(plans),
                          "decoding": {"greedy": True, "max_new_tokens": p["max_new_tokens"], "stop": list(greedy.stop)},
                          "heldout_sha256": sha256_file(ctx.input("mt_heldout") / "heldout.jsonl"),
                          "lineage": model_info(ctx).get("lineage", []),
                          "history": "each arm answers every turn on its own earlier answers"}
    atomic_write_json(ctx.out_dir / "eval.json", report, indent=2)
    common.write_records(ctx.out_dir / "items.jsonl", [
        {"id": pl["id"], "pattern": pl["pattern"], "turns": pl["turns"],
         "arms": {a: {"answers": answers[a][pl["id"]], "score": s[i]} for a, s in scores.items()}}
        for i, pl in enumerate(plans)])
    conv = report["conversation"]["overall"]
    lines = [f"Multi-turn evaluation on {len(plans)} held-out conversations ({ref}, greedy)."]
    for a in ("base", "trained"):
        x = conv["arms"][a]
        lines.append(f"{a:<8} conversations {x['successes']}/{conv['n']} ({100 * x['rate']:.1f}%)")
    for name in ("per_turn", "per_check"):
        for typ, r in ((report[name] or {}).get("per_type") or {}).items():
            lines.append(f"  {typ:<28} base {100 * r['arms']['base']['rate']:5.1f}%  trained "
                         f"{100 * r['arms']['trained']['rate']:5.1f}%  n={r['n']}  p_adj={r['p_adjusted']:.3g}")
    lines.append(report["gate"]["line"])
    atomic_write_text(ctx.out_dir / "summary.txt", "\n".join(lines) + "\n")
    if dev.startswith("cuda"):
        ctx.add_cost("gpu_s", round(time.time() - t0, 2))
    return {"headline": report["gate"]["line"][:200], "n": len(plans),
            "rates": {a: round(conv["arms"][a]["rate"], 3) for a in ("base", "trained")}, "go": report["gate"]["go"]}


def _mt_gate_check(gctx) -> GateCheck:
    import json

    rep = json.loads((gctx.output("mt_evaluate") / "eval.json").read_text(encoding="utf-8"))
    ov = rep["conversation"]["overall"]
    return GateCheck(passed=bool(rep["gate"]["go"]), reasons=list(rep["gate"]["reasons"]),
                     summary={"lift": ov["lift"], "p_value": ov["mcnemar"]["p_value"], "line": rep["gate"]["line"]})


mt_gate = gate("mt_gate", check=_mt_gate_check, policy="review",
               criteria=["Trained beats its starting model on whole held-out conversations (McNemar p < alpha)",
                         "No turn position and no check kind (remembered constraints included) regressed significantly"],
               description="Proceed past the multi-turn stage only with an honest, significant improvement.")

pipeline = Pipeline(
    "cai-multiturn", [parent_model, prepare_model, mt_heldout, mt_data, mt_qc, mt_sft, mt_evaluate,
                      *_regression_nodes("mt_sft"), mt_gate],
    expand_config=expand_multiturn_config,
    goal="The multi-turn stage: the previous stage's model writes 2-4 turn conversations in a transcript framing "
         "(completion mode) whose later turns depend on earlier ones, every turn verifiably checked; SFT on the "
         "assistant turns only; paired evaluation per turn and per conversation on held-out conversations made first.")
