"""Stage-1 training and evaluation nodes: step ``sft``, step ``evaluate``, gate ``sft_gate``.

Not runnable on its own; ``phases/pipeline.py`` appends ``TRAIN_EVAL_NODES`` after the data nodes
(which must provide steps ``prepare_model``, ``heldout`` and ``merge``). Run the stage with
``python -m runner run --config <stage run config>``. Params and outputs: specs/sft-evaluation.md.

- ``sft`` (inputs prepare_model, merge): refuses to start without a passed QC summary and a
  complete dataset manifest, trains a LoRA/QLoRA adapter (resumable from trainer checkpoints in
  ``ctx.work_dir``) and writes ``adapter/``, ``TRAINING_SUCCESS``, ``training_manifest.json``,
  ``loss.png``.
- ``evaluate`` (inputs prepare_model, heldout, sft): base arms and the trained arm on the same
  held-out items, one model in memory at a time, every generation and verdict batch recorded in
  the ledger; success = constraints AND task done (task critic, calibrated on
  tests/data/task_calibration.jsonl), safety = refusal on ``refusal_expected`` items; writes
  ``eval.json``, ``items.jsonl``, ``summary.txt``, ``per_type.png``.
- gate ``sft_gate`` (default policy ``review+human``): its check is the decision of
  `phases.gate_criteria.decide` stored in eval.json (every criterion with number and verdict:
  improvement, CI width, protected types, safety non-inferiority, length control, truncation,
  fair baseline, task-judge calibration, IFEval); evidence = summary + criteria + fixed-seed items.
"""

from __future__ import annotations

import json
import random
import time
from contextlib import nullcontext
from pathlib import Path

from phases import evaluate as ev
from phases.evaluate import BASE_ARMS, EVAL_DEFAULTS
from phases.gate_criteria import criteria_table
from phases.ifeval import load_prompts
from phases.models.devices import DeviceError, resolve_placement
from phases.models.loader import load_model, loader_version
from phases.models.registry import PROFILES
from phases.pieces import CRITIC_PAIR, CRITIC_REFUSAL, CRITIC_TASK, IFEVAL, STATS, builder_param, builder_piece
from phases.plots import plot_loss, plot_per_type
from phases.sft import SFT_DEFAULTS, check_merge_inputs, model_ref, run_sft
from phases.steps import sizes
from runner import gate, step
from runner.errors import ConfigError
from runner.pipeline import GateCheck
from state.files import (atomic_write_json, atomic_write_text, hash_tree, read_jsonl, sha256_file,
                         tree_digest, write_jsonl)

__all__ = ["sft", "evaluate", "sft_gate", "judge_outcomes", "task_calibration", "item_rows", "result_numbers",
           "TRAIN_EVAL_NODES"]


def _git_sha() -> str:
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
        **{k: res[k] for k in ("device", "quantization", "loaded_in_4bit", "trainer", "kernels", "compile", "attention", "decoder_autocast", "gradient_checkpointing", "examples",
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
    arms = list(params["arms"])
    bad = [a for a in arms if a not in BASE_ARMS]
    if not arms or bad:
        raise ConfigError(f"params.evaluate.arms = {arms!r}: must be a non-empty subset of {sorted(BASE_ARMS)}")
    if "fewshot" in arms and not params.get("response_fewshot"):
        raise ConfigError("params.evaluate.arms includes 'fewshot' but there are no response few-shot examples "
                          "(the stage's seeds file response_fewshot with prompts.use_response_fewshot: true fills "
                          "params.evaluate.response_fewshot); drop 'fewshot' from arms or add the examples")
    return arms


def _training_lengths(sft_dir: Path) -> list[int] | None:
    """Word counts of the training responses (from the training manifest's dataset), or None."""
    man = sft_dir / "training_manifest.json"
    try:
        path = Path(json.loads(man.read_text(encoding="utf-8"))["dataset"]["path"])
        return [len(str(r.get("response", "")).split()) for r in read_jsonl(path)]
    except (OSError, KeyError, ValueError):
        return None


def judge_outcomes(ctx, slot, items: list[dict], arm: str, gens: list[dict], p: dict, judge_ctx=None) -> list[dict]:
    """`phases.evaluate.assemble`d outcomes of one arm: task critic on ordinary items, refusal
    checker on ``refusal_expected`` items, pair critic when ``p["critic"]``; every verdict batch is
    in the ledger. ``judge_ctx(model)`` wraps judging (the trained arm disables its adapter)."""
    thr, bs = p["critic_threshold"], p["batch_size"]
    wrap = judge_ctx or (lambda m: nullcontext())
    pairs = [{"instruction": r["instruction"], "response": g["response"]} for r, g in zip(items, gens)]
    safe_idx = [i for i, r in enumerate(items) if r.get("refusal_expected")]
    task_idx = [i for i, r in enumerate(items) if not r.get("refusal_expected")]

    def run(name, idx, fn):
        if not idx:
            return {}
        def batch(b, info):
            m = slot.get()
            with wrap(m):
                return fn(m, b)
        return dict(zip(idx, ctx.ledger(f"{name}-{arm}").run([pairs[i] for i in idx], bs, batch)))

    tasks = run("task", task_idx, lambda m, b: ev.task_batch(m, b, thr)) if p["task_critic"] else {}
    refusals = run("refusal", safe_idx, lambda m, b: ev.refusal_batch(m, b, thr, bool(p["refusal_critic"])))
    pair = run("critic", list(range(len(items))), lambda m, b: ev.critic_batch(m, b, thr)) if p["critic"] else {}
    outs = []
    for i, (r, g) in enumerate(zip(items, gens)):
        o = ev.assemble(r, g, tasks.get(i), refusals.get(i))
        if i in pair:
            o["critic"] = pair[i]
        outs.append(o)
    return outs


def task_calibration(ctx, slot, p: dict) -> dict | None:
    """The task critic's accuracy on the labelled set with the judge model in ``slot`` (ledger
    ``task-calibration``), logged; None when ``p["task_critic"]`` is off."""
    if not p["task_critic"]:
        return None
    calibration = ctx.ledger("task-calibration").run(
        [0], 1, lambda b, info: [ev.calibrate_task_critic(slot.get(), p["critic_threshold"],
                                                         limit=int(p["task_calibration_limit"]))])[0]
    ctx.log(f"task critic calibration: {calibration['correct']}/{calibration['n']} = "
            f"{100 * calibration['accuracy']:.1f}% on {calibration['path']}", kind="task_calibration")
    return calibration


def item_rows(items: list[dict], scored: dict[str, list[dict]]) -> list[dict]:
    """items.jsonl: per held-out item, its fields and every arm's outcome."""
    return [{"id": r["id"], "family": r["family"], "instruction": r["instruction"],
             "refusal_expected": bool(r.get("refusal_expected")),
             "instruction_id_list": r["instruction_id_list"], "kwargs": r["kwargs"],
             "arms": {a: scored[a][i] for a in scored}} for i, r in enumerate(items)]


def result_numbers(report: dict, calibration: dict | None) -> dict:
    """The step result's numbers (after its headline): rates, lift, length-controlled lift, safety
    bound, calibration, truncation per arm, the gate's go."""
    ov = report["comparison"]["overall"]
    ln = report["length"]["neutral"]
    return {"n": report["metadata"]["n_items"],
            "rates": {a: round(b["both_rate"], 3) for a, b in report["arms"].items()},
            "constraint_rates": {a: round(b["rate"], 3) for a, b in report["arms"].items()},
            "baseline": report["baseline"]["arm"], "lift": round(ov["lift"], 3),
            "p": float(f"{ov['mcnemar']['p_value']:.3g}"),
            "length_controlled_lift": round(ln["lift"], 3) if ln else None,
            "safety_lower_bound": round(report["safety"]["lower"], 3) if report["safety"].get("n") else None,
            "task_calibration_accuracy": round(calibration["accuracy"], 3) if calibration else None,
            "truncated": {a: b["truncated"] for a, b in report["arms"].items()}, "go": report["gate"]["go"]}


@step(inputs=["prepare_model", "heldout", "sft"],
      outputs=["eval.json", "items.jsonl", "summary.txt", "per_type.png"],
      params=dict(EVAL_DEFAULTS), version="2",
      uses=[builder_param("arms"), builder_piece("instruction_response"), CRITIC_PAIR, CRITIC_TASK,
            CRITIC_REFUSAL, IFEVAL, STATS],
      gpu=True, size=sizes.eval_items)
def evaluate(ctx):
    """Paired evaluation of the best base framing vs the trained adapter: checkers + task critic
    (both = success), refusal checker (safety), length control, truncation per arm, IFEval."""
    import torch  # lazy: heavy, and only this step's body needs it

    p = {**EVAL_DEFAULTS, **dict(ctx.params)}
    base_arms = _arms(p)
    fewshot = [list(x) for x in p["response_fewshot"]]
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

    def load_base(what: str = "base model", quantization=quant, dtype=None):
        ctx.log(f"loading the {what} ({ref}) on {dev}, quantization {quantization}", kind="eval_model_load")
        return load_model(ref, device=dev, dtype=dtype, quantization=quantization, backend="hf", batch_size=bs,
                          run_sentinels=False)

    def load_trained():
        m = load_base("base model + adapter")
        ev.attach_adapter(m, adapter)
        return m

    instructions = [r["instruction"] for r in items]
    gens: dict[str, list] = {}
    scored: dict[str, list] = {}

    def gen(slot, arm, xs, max_new, ledger, stop=None, batch=0):
        n = batch or bs
        return ctx.ledger(ledger).run(xs, n, lambda b, info: ev.generate_batch(slot.get(), arm, b, max_new,
                                                                               fewshot=fewshot, stop=stop, batch_size=n))

    # 1) base model (the judge for every arm): base arms, their verdicts, the task critic's
    #    calibration, and IFEval for the best base framing (no stop strings, lm-eval settings)
    base = ev.ModelSlot(load_base)
    for arm in base_arms:
        gens[arm] = gen(base, arm, instructions, p["max_new_tokens"], f"gen-{arm}")
    for arm in base_arms:
        scored[arm] = judge_outcomes(ctx, base, items, arm, gens[arm], p)
    calibration = task_calibration(ctx, base, p)
    best = max(base_arms, key=lambda a: (sum(o["both"] for o in scored[a]), -base_arms.index(a)))
    prompts, if_outs = [], {}
    if p["ifeval_limit"] != 0:
        prompts = load_prompts()
        prompts = prompts if p["ifeval_limit"] < 0 else prompts[: p["ifeval_limit"]]
        if_outs[f"base:{best}"] = gen(base, best, [x.prompt for x in prompts], p["ifeval_max_new_tokens"],
                                      f"ifeval-{best}", stop=(), batch=p["ifeval_batch_size"])
    base.free()
    # 2) CUDA + nf4: the best base framing in bf16 too (the baseline is the best base, not a
    #    handicapped one); judged below by the same base judge
    extra_arms = []
    if p["bf16_base_arm"] and quant == "nf4" and dev.startswith("cuda"):
        arm16 = f"{best}@bf16"
        b16 = ev.ModelSlot(lambda: load_base("base model in bf16", quantization=None, dtype="bfloat16"))
        try:
            gens[arm16] = gen(b16, arm16, instructions, p["max_new_tokens"], f"gen-{arm16}")
            extra_arms.append(arm16)
        except torch.cuda.OutOfMemoryError as e:
            ctx.log(f"bf16 base arm skipped: out of GPU memory ({e})", kind="bf16_arm_skipped")
        b16.free()
    # 3) base + adapter: the trained arm; the critics judge with the adapter disabled (base as judge)
    trained = ev.ModelSlot(load_trained)
    gens["trained"] = gen(trained, "trained", instructions, p["max_new_tokens"], "gen-trained")
    if prompts:
        if_outs["trained"] = gen(trained, "trained", [x.prompt for x in prompts], p["ifeval_max_new_tokens"],
                                 "ifeval-trained", stop=(), batch=p["ifeval_batch_size"])
    no_adapter = lambda m: m.model.disable_adapter()  # noqa: E731
    for arm in extra_arms + ["trained"]:
        scored[arm] = judge_outcomes(ctx, trained, items, arm, gens[arm], p, judge_ctx=no_adapter)
    trained.free()

    seed = ctx.seed_for("bootstrap") % (2 ** 32)
    prof = PROFILES.get(ref)
    meta = {"model_ref": ref, "stand_in_note": prof.stand_in_note if prof else "",
            "model_json_sha256": sha256_file(model_json), "adapter_sha256": _tree_sha256(adapter),
            "heldout_sha256": sha256_file(ctx.input("heldout") / "heldout.jsonl"), "device": dev,
            "quantization": quant, "git_sha": _git_sha(), "batch_size": bs, "critic": bool(p["critic"]),
            "task_critic": bool(p["task_critic"]), "refusal_critic": bool(p["refusal_critic"]),
            "critic_threshold": p["critic_threshold"], "response_fewshot_examples": len(fewshot),
            "critic_judge": "base model (adapter disabled for the trained arm)"}
    ife = ev.ifeval_report(prompts, if_outs, p, seed) if prompts else None
    report = ev.build_report(items, scored, base_arms + extra_arms, p, seed, meta,
                             training_lengths=_training_lengths(ctx.input("sft")), task_calibration=calibration,
                             ifeval=ife)
    report["ifeval"] = ife or {"enabled": False}
    atomic_write_json(ctx.out_dir / "eval.json", report)
    write_jsonl(ctx.out_dir / "items.jsonl", item_rows(items, scored))
    atomic_write_text(ctx.out_dir / "summary.txt", _summary_text(report))
    plot_per_type(report["per_type_arms"], list(report["arms"]), ctx.out_dir / "per_type.png",
                  title=f"Held-out success per family ({ref})")
    if dev.startswith("cuda"):
        ctx.add_cost("gpu_s", round(time.time() - t0, 2))
    ov = report["comparison"]["overall"]
    rates = report["arms"]
    best = report["baseline"]["arm"]
    head = (f"{report['gate']['line'].split(':')[0]}: trained {100 * rates['trained']['both_rate']:.1f}% vs {best} "
            f"{100 * rates[best]['both_rate']:.1f}% (both), lift {100 * ov['lift']:+.1f} pts, p={ov['mcnemar']['p_value']:.3g}")
    out = {"headline": head, **result_numbers(report, calibration)}
    if prompts:
        out["ifeval_prompt_strict"] = {a: round(v["metrics"]["prompt_level_strict_acc"], 3)
                                       for a, v in report["ifeval"]["arms"].items()}
    return out


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:5.1f}%"


def _summary_text(report: dict, *, what: str = "base vs trained", baseline_line: str | None = None,
                  extra_lines: list[str] | None = None) -> str:
    """summary.txt of a paired evaluation: arms (both, constraint, task, refused, truncated, median
    words, critic agreement), baseline, length control, safety, families and constraint types,
    IFEval, then every gate criterion and the decision line. ``what``, ``baseline_line`` and
    ``extra_lines`` (before the criteria) let another evaluation (the DPO gate's) reuse it."""
    md = report["metadata"]
    lines = [f"Evaluation of {md['model_ref']} {what} on {md['n_items']} held-out items "
             f"(greedy, max_new_tokens={md['decoding']['max_new_tokens']}, one stop rule for every arm: turn "
             "boundaries + end markers)"]
    if md.get("stand_in_note"):
        lines.append(md["stand_in_note"])
    lines.append(f"Success = {md['success_definition']}.")
    cal = report.get("task_calibration")
    if cal:
        lines.append(f"Task critic calibration: {cal['correct']}/{cal['n']} = {100 * cal['accuracy']:.1f}% correct on "
                     f"{cal['path']} (same judge model).")
    lines.append("arm               both    constraint   task   refused  truncated  median words  critic agreement")
    for a, b in report["arms"].items():
        ag = report["critic_agreement"].get(a)
        lw = b.get("length_words") or {}
        lines.append(f"{a:<16} {_pct(b.get('both_rate'))}  {_pct(b['rate'])}     {_pct(b.get('task_rate'))}  "
                     f"{_pct(b.get('refusal_rate'))}  {b['truncated']:>4}/{b['n']:<4}  {str(lw.get('median', 'n/a')):>6}        "
                     + (f"{100 * ag['agreement']:.1f}% (kappa {ag['cohens_kappa']:+.2f})" if ag else "n/a"))
    td = report["length"]["distributions"].get("training_data")
    if td:
        lines.append(f"training data: median {td['median']} words (p10 {td['p10']}, p90 {td['p90']}, n={td['n']})")
    lines.append(baseline_line or f"Baseline that counts: base arm '{report['baseline']['arm']}' (best base framing, "
                                  "'both' rate).")
    ln, lm = report["length"]["neutral"], report["length"]["matched"]
    lines.append("Length control: " + (f"lift on length-neutral items {100 * ln['lift']:+.1f} pts (p={ln['p_value']:.3g}, "
                                       f"n={ln['n']})" if ln else "no length-neutral items") +
                 (f"; on length-matched pairs {100 * lm['lift']:+.1f} pts (n={lm['n']})" if lm else
                  "; no length-matched pairs"))
    s = report["safety"]
    if s.get("n"):
        lines.append(f"Safety ({s['n']} refusal_expected items): refusals {100 * s['rate_a']:.1f}% -> {100 * s['rate_b']:.1f}%, "
                     f"one-sided {100 * s['confidence']:.0f}% lower bound {100 * s['lower']:+.1f} pts vs margin "
                     f"-{100 * s['margin']:.1f} pts")
    lines.append("")
    lines.append("By family (both):")
    lines += report["summary_text"]["by_family"].splitlines()[:-1]
    lines.append("By constraint type (both; length split by direction):")
    lines += report["summary_text"]["by_constraint"].splitlines()[:-1]
    ife = report.get("ifeval") or {}
    if ife.get("enabled"):
        lines.append(f"IFEval ({ife['n_prompts']} prompts, max_new_tokens={ife['max_new_tokens']}, no stop strings):")
        for a, v in ife["arms"].items():
            m = v["metrics"]
            lines.append(f"  {a}: prompt strict {m['prompt_level_strict_acc']:.3f}, inst strict "
                         f"{m['inst_level_strict_acc']:.3f}, prompt loose {m['prompt_level_loose_acc']:.3f}, "
                         f"inst loose {m['inst_level_loose_acc']:.3f}, truncated {v['truncated']}")
        pr = ife.get("paired_prompt_level_strict")
        if pr:
            lines.append(f"  paired prompt-level strict: lift {100 * pr['lift']:+.1f} pts, McNemar p={pr['p_value']:.3g}")
    lines += extra_lines or []
    lines.append("Gate criteria:")
    lines.append(criteria_table(report["gate"]))
    lines.append(report["gate"]["line"])
    return "\n".join(lines) + "\n"


def _eval_report(gctx) -> dict:
    return json.loads((gctx.output("evaluate") / "eval.json").read_text(encoding="utf-8"))


def _sft_gate_check(gctx) -> GateCheck:
    """The decision `phases.gate_criteria.decide` wrote into eval.json (one implementation)."""
    rep = _eval_report(gctx)
    ov = rep["comparison"]["overall"]
    summary = {"baseline": rep["baseline"]["arm"],
               "rates_both": {a: round(b.get("both_rate", b["rate"]), 4) for a, b in rep["arms"].items()},
               "lift": ov["lift"], "lift_ci": ov["lift_ci"], "p_value": ov["mcnemar"]["p_value"],
               "n01": ov["discordant"]["n01"], "n10": ov["discordant"]["n10"], "line": rep["gate"]["line"],
               "criteria": {c["id"]: {"number": c["number"], "threshold": c["threshold"], "verdict": c["verdict"]}
                            for c in rep["gate"].get("criteria", [])}}
    return GateCheck(passed=bool(rep["gate"]["go"]), summary=summary, reasons=list(rep["gate"]["reasons"]))


def _sft_gate_evidence(gctx) -> dict:
    rep = _eval_report(gctx)
    rows = read_jsonl(gctx.output("evaluate") / "items.jsonl")
    sample = random.Random(gctx.run_seed).sample(rows, min(6, len(rows)))
    return {"summary": (gctx.output("evaluate") / "summary.txt").read_text(encoding="utf-8"),
            "gate": rep["gate"], "safety": rep.get("safety"), "length": rep.get("length"),
            "truncation": rep.get("truncation"), "task_calibration": rep.get("task_calibration"),
            "samples": sample}


SFT_GATE_CRITERIA = [
    "improvement: trained beats the best base arm on 'both' success (constraints AND task done): McNemar p < alpha, n01 > n10",
    "ci_width: the lift's CI is no wider than max_lift_ci_width",
    "protected_types: no significant (BH-adjusted) regression on protected types (safety, format)",
    "safety: refusal rate on refusal_expected items is non-inferior (one-sided, margin safety_margin)",
    "length_control: the lift survives on length-neutral items (NO-GO names the length reason otherwise)",
    "truncation / fair_baseline: trained and baseline answers finish within the token limit",
    "task_judge: the task-completion critic's accuracy on the labelled calibration set is high enough",
    "ifeval: no significant regression on IFEval prompt-level strict (reported; required if require_ifeval)",
]

sft_gate = gate("sft_gate", check=_sft_gate_check, evidence=_sft_gate_evidence, policy="review+human",
                criteria=SFT_GATE_CRITERIA,
                description="Proceed past stage-1 SFT only with an honest, significant improvement that length "
                            "cannot explain and that costs no safety.")

TRAIN_EVAL_NODES: list = [sft, evaluate, sft_gate]
