"""The generation engine of the stage-1 data steps: instructions, critics, responses, records.

Not runnable; used by `heldout`, `pilot`, `scale` and `merge` (phases/steps/*.py). Every model call goes
through the batch ledger (``ctx.ledger(name).run(items, batch_size, fn)``), so a killed step
redoes only unfinished batches, and all prompt building, parsing, cleaning, dedup, critic and
QC logic is the canonical modules' (prompts, instructions, dedup, critic, cleaning, qc).

Seeds: every sampled item has its own seed, ``derive_seed(seed_base, kind, item key)``, where
the item key is a *global* index (the instruction-generation prompt index, the record id). The
ledger's per-batch seed is not used for sampling, because it would tie an item's output to the
batch size and to shard boundaries; item seeds make a resumed run byte-identical (batches are
replayed with the same items, same seeds) and let 1 shard and N shards generate the same items.

Instruction-generation prompt ``i`` (global index): a seeded weighted draw of a family, a seeded
sample of ``examples_per_prompt`` of its seed instructions, the canonical numbered-list builder
(``Topic: <family description>``), sampled with ``generation.instructions``; the completion is
parsed with ``parse_instructions(first_index=k+1)``.
"""
from __future__ import annotations

import functools

import math
import os
import random
from typing import Any, Callable

from phases.cleaning import clean_response, runaway_reason
from phases.critic import judge
from phases.dedup import dedup, leakage_report
from phases.ifeval import load_prompts
from phases.instructions import parse_instructions
from phases.pieces import (CLEANING, CRITIC_INSTRUCTION, CRITIC_PAIR, CRITIC_REQUEST_SAFETY, DEDUP, INSTRUCTION_PARSING,
                           QC, builder_param)
from phases.prompts import get_builder
from phases.qc import REQUEST_SAFETY, instruction_passes, instruction_rule, is_kept  # noqa: F401 (re-export)
from phases.steps.common import sampling
from runner.errors import DataError
from runner.pipeline import derive_seed
from state.files import canonical_json, sha256_text

# The shared pieces a generate-judge-clean-QC step calls (pilot and scale): their versions enter
# the cache key (phases/pieces.py).
DATA_PIECES = [CRITIC_INSTRUCTION, CRITIC_REQUEST_SAFETY, CRITIC_PAIR,
               builder_param("instruction_builder", "response_builder"), INSTRUCTION_PARSING, DEDUP, CLEANING, QC]


def phash(obj: Any) -> str:
    """Short hash of params, used in ledger names so changed params never reuse old batches."""
    return sha256_text(canonical_json(obj))[:10]


def _r6(x: float) -> float:
    return round(float(x), 6)


def verdict_dict(v: Any) -> dict:
    """A critic `Verdict` as the record's JSON (METHOD.md fields + both raw label orders)."""
    out = {"is_good": v.is_good, "label": v.label, "logp_a": _r6(v.logp_a), "logp_b": _r6(v.logp_b),
           "margin": _r6(v.margin), "confident": v.confident, "keep": v.keep}
    for name in ("ab", "ba"):
        o = getattr(v, name)
        out[name] = {"label": o.label, "logp_a": _r6(o.logp_a), "logp_b": _r6(o.logp_b), "margin": _r6(o.margin),
                     "confident": o.confident, "is_good": o.is_good}
    return out


# ---- instruction generation -------------------------------------------------------------

def prompt_spec(p: dict, seed_base: int, index: int, family: str | None = None) -> dict:
    """The family, examples and prompt of global instruction-generation prompt ``index``."""
    rng = random.Random(derive_seed(seed_base, "iprompt", index))
    fams = sorted(p["families"])
    if family is None:
        weights = [float(p["families"][f].get("weight", 1.0)) for f in fams]
        if not any(w > 0 for w in weights):
            raise DataError("every enabled family has weight 0; give at least one family a positive weight")
        family = rng.choices(fams, weights=weights)[0]
    seeds = p["seeds"][family]
    k = min(int(p["instruction_generation"]["examples_per_prompt"]), len(seeds))
    examples = rng.sample(seeds, k)
    build = get_builder(p["instruction_builder"])
    prompt = build(examples, start_index=1, family=p["families"][family]["description"], header=p["list_header"])
    return {"index": index, "family": family, "examples": examples, "prompt": prompt,
            "seed": derive_seed(seed_base, "igen", index)}


def generate_instruction_lists(ctx, model, p: dict, specs: list[dict], gen: dict, ledger: str) -> list[dict]:
    """Complete the numbered-list prompts (batched, through the ledger) and parse them.

    Returns one dict per prompt: ``index, family, completion, n_tokens, finish_reason,
    kept: [instruction...], dropped: [[text, reason]...], counts``.
    """
    ig = p["instruction_generation"]
    params = sampling(gen)

    def work(batch: list[dict], info) -> list[dict]:
        gens = model.generate([s["prompt"] for s in batch], params, [s["seed"] for s in batch])
        out = []
        for s, g in zip(batch, gens):
            parsed = parse_instructions(g.text, first_index=len(s["examples"]) + 1,
                                        min_words=ig["min_words"], max_words=ig["max_words"])
            out.append({"index": s["index"], "family": s["family"], "completion": g.text, "n_tokens": g.n_tokens,
                        "finish_reason": g.finish_reason, "kept": parsed.kept,
                        "dropped": [list(d) for d in parsed.dropped], "counts": parsed.counts()})
        return out

    return ctx.ledger(ledger).run(specs, p["batch_size"], work)


def candidates_from(lists: list[dict], prefix: str) -> list[dict]:
    """Flatten parsed lists into candidates with stable ids ``{prefix}-p{index:06d}-{pos:02d}``."""
    out = []
    for li in lists:
        for pos, text in enumerate(li["kept"]):
            out.append({"id": f"{prefix}-p{li['index']:06d}-{pos:02d}", "prompt_index": li["index"],
                        "family": li["family"], "instruction": text})
    return out


def parse_counts(lists: list[dict]) -> dict:
    total: dict[str, int] = {}
    for li in lists:
        for k, v in li["counts"].items():
            total[k] = total.get(k, 0) + v
    total["prompts"] = len(lists)
    total["completions_empty"] = sum(1 for li in lists if not li["completion"].strip())
    return {f"parse_{k}": v for k, v in sorted(total.items())}


def dedup_candidates(cands: list[dict], p: dict) -> tuple[list[dict], list[dict]]:
    """Exact + near-duplicate removal (ROUGE-L) in order, also against the seed instructions."""
    seeds = [s for fam in sorted(p["seeds"]) for s in p["seeds"][fam]]
    res = dedup([c["instruction"] for c in cands], p["instruction_generation"]["near_dup_threshold"], against=seeds)
    dropped = [{**cands[d["index"]], "drop_reason": f"dedup_{d['reason']}" + ("_seed" if d["match_against"] is not None else ""),
                "score": d["score"]} for d in res.dropped]
    return [cands[i] for i in res.kept], dropped


@functools.lru_cache(maxsize=1)
def ifeval_prompt_texts() -> tuple[str, ...]:
    """The 541 IFEval prompts (the benchmark's inputs), for the training-data leakage check."""
    return tuple(x.prompt for x in load_prompts())


def leakage_check(cands: list[dict], heldout: list[dict], cfg: dict) -> tuple[list[dict], list[dict], dict]:
    """Drop candidates that overlap a held-out base instruction OR an IFEval prompt (exact,
    substring, ROUGE-L; the same rules and thresholds for both references).

    Returns (clean, dropped, report); ``report`` is `phases.dedup.leakage_report`'s dict for the
    held-out set as it was *before* dropping (what was caught), with ``dropped_ids`` added, and
    ``report["ifeval"]``: the same for the IFEval prompts (``counts``, ``dropped_ids``, ``pairs``
    with ``ifeval_key``). Dropped records carry ``drop_reason`` ``heldout_leak`` or ``ifeval_leak``
    (a candidate leaking into both is counted as a held-out leak).
    """
    kw = dict(min_tokens=cfg["min_tokens"], min_fraction=cfg["min_fraction"], rouge_threshold=cfg["rouge_threshold"])
    texts = [c["instruction"] for c in cands]
    rep = leakage_report(texts, [h["base_instruction"] for h in heldout], **kw)
    bad = set(rep["offending_train_indices"])
    rep["dropped_ids"] = [cands[i]["id"] for i in sorted(bad)]
    for pair in rep["pairs"]:
        pair["train_id"] = cands[pair["train_index"]]["id"]
        pair["heldout_id"] = heldout[pair["heldout_index"]]["id"]
    ifeval = ifeval_prompt_texts()
    irep = leakage_report(texts, list(ifeval), **kw)
    ibad = set(irep["offending_train_indices"]) - bad
    irep["dropped_ids"] = [cands[i]["id"] for i in sorted(ibad)]
    for pair in irep["pairs"]:
        pair["train_id"] = cands[pair["train_index"]]["id"]
        pair["ifeval_prompt"] = ifeval[pair["heldout_index"]][:120]
    irep.pop("offending_train_indices", None)
    rep["ifeval"] = irep
    clean = [c for i, c in enumerate(cands) if i not in bad and i not in ibad]
    dropped = ([{**c, "drop_reason": "heldout_leak"} for i, c in enumerate(cands) if i in bad]
               + [{**c, "drop_reason": "ifeval_leak"} for i, c in enumerate(cands) if i in ibad])
    return clean, dropped, rep


def leak_summary(rep: dict) -> dict:
    """The manifest's compact view of a `leakage_check` report (its IFEval part included)."""
    out = {k: rep[k] for k in ("method", "n_train", "n_heldout", "counts", "passed", "dropped_ids", "pairs",
                               "pairs_truncated")}
    if "ifeval" in rep:  # the same check against the IFEval prompts (issue 11)
        ir = rep["ifeval"]
        out["ifeval"] = {"n_ifeval": ir["n_heldout"], "counts": ir["counts"], "passed": ir["passed"],
                         "dropped_ids": ir["dropped_ids"], "pairs": ir["pairs"][:20]}
    return out


def collect_instructions(ctx, model, p: dict, gen: dict, *, seed_base: int, needed: int, tag: str,
                         id_prefix: str, start_index: int = 0, n_prompts: int | None = None,
                         family: str | None = None, against_filter: Callable[[list[dict]], list[dict]] | None = None,
                         max_rounds: int = 5, est_per_prompt: float = 3.0) -> dict:
    """Generate instruction lists in rounds until ``needed`` unique candidates exist.

    With ``n_prompts`` set, exactly that many prompts (indices ``start_index..``) in one round
    (scale shards); otherwise rounds of ``ceil(missing / yield)`` prompts (yield measured from
    earlier rounds, ``est_per_prompt`` at first), at most ``max_rounds``. Each round is a ledger
    ``{tag}-r{round}``; the result is a deterministic function of the params and seeds.
    Returns ``{"candidates", "dropped", "lists", "counts"}``; candidates are deduped (and
    filtered by ``against_filter``, e.g. the leakage check) and cut to ``needed`` if more.
    """
    lists: list[dict] = []
    index = start_index
    cands: list[dict] = []
    dropped: list[dict] = []
    rounds = 1 if n_prompts is not None else max_rounds
    for r in range(rounds):
        if n_prompts is not None:
            count = n_prompts
        else:
            have = len(cands)
            if have >= needed:
                break
            per = (sum(len(li["kept"]) for li in lists) / len(lists)) if lists else est_per_prompt
            bs = p["batch_size"]  # whole batches: a short last batch costs nearly a full one
            count = math.ceil(math.ceil((needed - have) / max(per, 0.5)) / bs) * bs
        specs = [prompt_spec(p, seed_base, i, family) for i in range(index, index + count)]
        index += count
        lists += generate_instruction_lists(ctx, model, p, specs, gen, f"{tag}-r{r}")
        raw = candidates_from(lists, id_prefix)
        cands, dropped = dedup_candidates(raw, p)
        if against_filter is not None:
            cands, more = against_filter(cands)
            dropped = dropped + more
    if not lists or not any(li["completion"].strip() for li in lists):
        raise DataError(f"instruction generation returned nothing ({len(lists)} prompts, all completions empty); "
                        "check the model (prepare_model's sentinels) and generation.instructions params")
    if not cands:
        raise DataError(f"instruction generation produced no usable instruction from {len(lists)} prompts "
                        f"(parse counts: {parse_counts(lists)}); look at the completions in the ledger and at "
                        "instruction_generation / generation.instructions params")
    cut = cands[needed:] if needed else []
    if needed:
        cands = cands[:needed]
    counts = {**parse_counts(lists), "candidates_unique": len(cands) + len(cut), "candidates_used": len(cands),
              "candidates_surplus": len(cut), "dropped_dedup": sum(1 for d in dropped if d["drop_reason"].startswith("dedup")),
              "dropped_heldout_leak": sum(1 for d in dropped if d["drop_reason"] == "heldout_leak"),
              "dropped_ifeval_leak": sum(1 for d in dropped if d["drop_reason"] == "ifeval_leak")}
    return {"candidates": cands, "dropped": dropped, "lists": lists, "counts": counts, "next_index": index}


# ---- critics and responses ----------------------------------------------------------------

# Test hook: the SmolLM2 test model judges every item bad, which leaves the integration tests no
# data to merge. With this env var set to 1 the critic still runs and its scores are recorded,
# but every verdict is overridden to good/confident and marked ``test_override: true``.
TEST_KEEP_ALL_ENV = "CAI_TEST_KEEP_ALL"


def judge_items(ctx, model, rubric: str, items: list, threshold: float, batch_size: int, ledger: str,
                enforce: bool = True) -> list[dict]:
    """A/B critic verdicts (both label orders, one forward pass each), batched via the ledger.

    ``enforce=False`` (stage key ``critics.enforce``, demo profiles only) keeps the verdict as the
    critic gave it and adds ``not_enforced: true``: QC still counts it, the keep rule ignores it.
    """
    override = os.environ.get(TEST_KEEP_ALL_ENV) == "1"

    def work(batch: list, info) -> list[dict]:
        out = [verdict_dict(v) for v in judge(model, rubric, batch, threshold)]
        if override:
            out = [{**v, "is_good": True, "label": "A", "confident": True, "keep": True, "test_override": True}
                   for v in out]
        elif not enforce:
            out = [{**v, "keep": True, "not_enforced": True} for v in out]
        return out

    return ctx.ledger(ledger).run(items, batch_size, work)


def generate_responses(ctx, model, p: dict, recs: list[dict], gen: dict, seed_base: int, ledger: str) -> list[dict]:
    """Response generation + cleaning + token counts for ``recs`` (each with id, instruction).

    ``raw_completion`` is every generated token decoded (a stop string included, a final eos
    token excluded), so the cleaner sees the end marker even when it stopped generation.
    """
    build = get_builder(p["response_builder"])
    fewshot = [tuple(x) for x in p["response_fewshot"]]
    params = sampling(gen)
    marker = p["end_marker"]

    def work(batch: list[dict], info) -> list[dict]:
        prompts = [build(r["instruction"], fewshot, marker) for r in batch]
        seeds = [derive_seed(seed_base, "resp", r["id"]) for r in batch]
        gens = model.generate(prompts, params, seeds)
        out = []
        for r, prompt, seed, g in zip(batch, prompts, seeds, gens):
            ids = list(g.token_ids)
            if g.finish_reason == "eos" and ids:
                ids = ids[:-1]
            raw = model.decode(ids)
            c = clean_response(raw, end_marker=marker or None)
            out.append({"id": r["id"], "prompt": prompt, "raw_completion": raw, "response": c.text,
                        "raw_tokens": g.n_tokens, "cleaned_tokens": model.count_tokens(c.text) if c.text else 0,
                        "hit_token_limit": g.hit_token_limit, "finish_reason": g.finish_reason,
                        "marker_found": c.marker_found, "heuristic_cut": c.heuristic_cut, "cut_line": c.cut_line,
                        "partial_marker_stripped": c.partial_marker_stripped,
                        "runaway": runaway_reason(c.text) if c.text else None, "response_seed": seed})
        return out

    return ctx.ledger(ledger).run(recs, p["batch_size"], work)


def build_records(ctx, model, p: dict, cands: list[dict], gen: dict, seed_base: int, tag: str,
                  respond_all: bool = False) -> list[dict]:
    """Instruction critic -> responses -> pair critic -> kept.

    Responses are generated for critic-kept instructions only, or for every instruction with
    ``respond_all`` (the pilot: its response QC numbers then do not depend on the instruction
    critic, and a weak critic still shows what generation and cleaning do). One record per
    candidate, in candidate order: the candidate fields, ``instruction_verdict``, the response
    fields (None when no response was generated), ``pair_verdict`` (None without a non-empty
    response) and ``kept`` (`phases.qc.is_kept`: instruction verdict passes and pair critic
    good, so a rejected instruction is never kept).

    A ``refusal_expected`` family's instruction is also judged by the ``request_safety`` critic
    (ledger ``{tag}-scritic``); that verdict, with ``rubric: "request_safety"`` and ``keep`` set
    by the flipped rule (`phases.qc.instruction_rule`: dropped only when confidently safe to
    answer), is its ``instruction_verdict``; the instruction critic's verdict is kept as
    ``instruction_critic_verdict``. Its response is judged by the pair critic, whose rubric
    calls a brief refusal of an unsafe request good. Other families are judged exactly as before.
    """
    if not p["critics"].get("both_orders", True):
        raise DataError("critics.both_orders: false is not supported; the canonical critic always scores both "
                        "label orders (position bias, METHOD.md)")
    th = float(p["critics"]["threshold"])
    bs = p["batch_size"]
    enforce = bool(p["critics"].get("enforce", True))
    iv = judge_items(ctx, model, "instruction", [c["instruction"] for c in cands], th, bs, f"{tag}-icritic", enforce)
    recs = [{**c, "instruction_verdict": v} for c, v in zip(cands, iv)]
    # refusal_expected families: their instructions are meant to be requests to decline, which the
    # instruction rubric calls bad; they are judged by the request-safety critic with the sense
    # flipped (phases.qc.instruction_rule, the held-out step's rule). The instruction critic's
    # verdict stays on the record as ``instruction_critic_verdict`` (not used by the keep rule).
    refusal = {f for f, spec in p["families"].items() if (spec or {}).get("refusal_expected", False)}
    idx = [i for i, r in enumerate(recs) if r.get("family") in refusal]
    if idx:
        sv = judge_items(ctx, model, REQUEST_SAFETY, [recs[i]["instruction"] for i in idx], th, bs, f"{tag}-scritic",
                         enforce)
        for i, v in zip(idx, sv):
            v = {**v, "rubric": REQUEST_SAFETY}
            recs[i] = {**recs[i], "instruction_critic_verdict": recs[i]["instruction_verdict"],
                       "instruction_verdict": {**v, "keep": instruction_passes(v)}}
    todo = recs if respond_all else [r for r in recs if r["instruction_verdict"]["keep"]]
    resp = {x["id"]: x for x in generate_responses(ctx, model, p, todo, gen["responses"], seed_base, f"{tag}-resp")}
    judged = [r for r in todo if resp[r["id"]]["response"]]
    pv = judge_items(ctx, model, "pair", [{"instruction": r["instruction"], "response": resp[r["id"]]["response"]}
                                          for r in judged], th, bs, f"{tag}-pcritic", enforce)
    pair = {r["id"]: v for r, v in zip(judged, pv)}
    out = []
    empty = {k: None for k in ("prompt", "raw_completion", "response", "raw_tokens", "cleaned_tokens",
                               "hit_token_limit", "finish_reason", "marker_found", "heuristic_cut", "cut_line",
                               "partial_marker_stripped", "runaway", "response_seed")}
    for r in recs:
        x = dict(resp.get(r["id"], empty))
        x.pop("id", None)
        rec = {**r, **x, "pair_verdict": pair.get(r["id"])}
        rec["kept"] = is_kept(rec)
        out.append(rec)
    return out


def sft_record(rec: dict, meta: dict, gen: dict, source: str) -> dict:
    """METHOD.md "Manifests -> SFT record" for a kept record."""
    keys = ("logp_a", "logp_b", "margin", "confident", "is_good", "label")
    return {
        "id": rec["id"], "family": rec["family"], "source": source,
        "instruction": rec["instruction"], "response": rec["response"],
        "prompt": rec["prompt"], "raw_completion": rec["raw_completion"],
        "raw_tokens": rec["raw_tokens"], "cleaned_tokens": rec["cleaned_tokens"],
        "instruction_verdict": {k: rec["instruction_verdict"][k] for k in keys + ("rubric",)
                                if k in rec["instruction_verdict"]},
        "pair_verdict": {k: rec["pair_verdict"][k] for k in keys},
        "metadata": {**meta, "generation_params": gen["responses"], "instruction_generation_params": gen["instructions"],
                     "seed": rec["response_seed"]},
    }


# ---- family-targeted instruction generation (the held-out set) ------------------------------

def weighted_quotas(weights: dict[str, float], n: int, min_one: bool = False) -> dict[str, int]:
    """``n`` split over the names with a positive weight, proportional to weight (largest
    remainder, ties by name). ``min_one``: every such name first gets 1 when ``n`` allows (so a
    small split still covers every name), the rest is split by weight."""
    names = sorted(f for f in weights if float(weights[f]) > 0)
    if not names or n <= 0:
        return {f: 0 for f in names}
    base = {f: (1 if min_one and n >= len(names) else 0) for f in names}
    left = n - sum(base.values())
    total = sum(float(weights[f]) for f in names)
    raw = {f: left * float(weights[f]) / total for f in names}
    q = {f: base[f] + int(raw[f]) for f in names}
    for f in sorted(names, key=lambda f: (-(raw[f] - int(raw[f])), f))[: n - sum(q.values())]:
        q[f] += 1
    return q


def family_plan(need: dict[str, int], n: int, seed: int) -> list[str]:
    """The families of ``n`` instruction-generation prompts. When ``n`` covers the total need,
    every family gets its ``need`` and the spare places are split by need; otherwise every
    family with a positive need gets one prompt (when ``n`` allows) and the rest is split by
    need. The order is a seeded shuffle (so batches mix families)."""
    total = sum(max(0, int(k)) for k in need.values())
    if n >= total:
        extra = weighted_quotas({f: float(k) for f, k in need.items()}, n - total)
        q = {f: int(need[f]) + extra.get(f, 0) for f in need if need[f] > 0}
    else:
        q = weighted_quotas({f: float(k) for f, k in need.items()}, n, min_one=True)
    plan = [f for f, k in sorted(q.items()) for _ in range(k)]
    random.Random(seed).shuffle(plan)
    return plan


def collect_by_family(ctx, model, p: dict, gen: dict, *, seed_base: int, targets: dict[str, int], tag: str,
                      id_prefix: str, assess: Callable[[list[dict], str], list[dict]], max_rounds: int,
                      required: dict[str, int] | None = None, est_per_prompt: float = 3.0) -> dict:
    """Generate instruction lists until every family has ``required[family]`` usable candidates
    (default: ``targets``), or ``max_rounds`` rounds have run.

    Every prompt's family is assigned (`family_plan`), not drawn: round 0 asks each family for
    ``ceil(target / est_per_prompt)`` prompts; each later round asks only the families still
    short of ``required`` (e.g. the quota, while ``targets`` = quota x over-generation: a round
    costs whole batches, so it is spent only where a family cannot fill its places), for
    ``ceil((target - usable) / measured yield)`` prompts each (yield = usable candidates per
    prompt of that family so far, at least 0.5). A round is whole batches (a short batch costs
    nearly a full one); the spare prompts go to the short families by need. Round ``r`` is the
    ledger ``{tag}-r{r}``; prompt indices continue across rounds, so seeds never repeat.

    ``assess(candidates, key)`` annotates candidates (e.g. with critic verdicts, through a
    ledger named with ``key``, unique per call) and sets ``usable`` (bool) on each. Only as many
    of a family's candidates as it still misses are assessed, in order, more when some come
    back unusable; the rest are ``surplus_unjudged`` (in ``dropped``, counted). Dedup is greedy
    in candidate order, so earlier candidates keep their status when rounds are added.
    Returns ``{"candidates" (assessed, unique, in order), "dropped", "lists", "counts",
    "rounds": [{"round", "prompts", "by_family": {family: prompts}}], "usable_by_family"}``.
    """
    fams = sorted(f for f in targets if targets[f] > 0)
    lists: list[dict] = []
    assessed: dict[str, dict] = {}
    cands: list[dict] = []
    dropped: list[dict] = []
    rounds: list[dict] = []
    index = 0
    bs = int(p["batch_size"])

    def usable_count() -> dict[str, int]:
        return {f: sum(1 for c in cands if c["family"] == f and c["id"] in assessed and assessed[c["id"]]["usable"])
                for f in fams}

    required = {f: min(int(required.get(f, 0)), targets[f]) for f in fams} if required is not None else targets
    for r in range(max(1, int(max_rounds))):
        usable = usable_count()
        floor = targets if r == 0 else required
        missing = {f: targets[f] - usable[f] for f in fams if usable[f] < floor[f]}
        if not missing:
            break
        need = {}
        for f, m in missing.items():
            n_prompts = sum(1 for li in lists if li["family"] == f)
            per = usable[f] / n_prompts if n_prompts else est_per_prompt
            need[f] = math.ceil(m / max(per, 0.5))
        count = math.ceil(sum(need.values()) / bs) * bs
        plan = family_plan(need, count, derive_seed(seed_base, "family_plan", r))
        specs = [prompt_spec(p, seed_base, index + i, fam) for i, fam in enumerate(plan)]
        index += count
        rounds.append({"round": r, "prompts": count,
                       "by_family": {f: plan.count(f) for f in sorted(set(plan))}})
        lists += generate_instruction_lists(ctx, model, p, specs, gen, f"{tag}-r{r}")
        cands, dropped = dedup_candidates(candidates_from(lists, id_prefix), p)
        # Assess (judge) only as many of a family's new candidates as it still misses, in order;
        # when some come back unusable, the next ones of that family follow (slice j).
        j = 0
        while True:
            usable = usable_count()
            pick, per_fam = [], {}
            for c in cands:
                f = c["family"]
                if c["id"] in assessed or f not in missing:
                    continue
                if per_fam.get(f, 0) < targets[f] - usable[f]:
                    pick.append(c)
                    per_fam[f] = per_fam.get(f, 0) + 1
            if not pick:
                break
            for c in assess(pick, f"r{r}-{j}"):
                assessed[c["id"]] = c
            j += 1
    if not lists or not any(li["completion"].strip() for li in lists):
        raise DataError(f"instruction generation returned nothing ({len(lists)} prompts, all completions empty); "
                        "check the model (prepare_model's sentinels) and generation.instructions params")
    out = [assessed[c["id"]] for c in cands if c["id"] in assessed]
    surplus = [{**c, "drop_reason": "surplus_unjudged"} for c in cands if c["id"] not in assessed]
    counts = {**parse_counts(lists), "candidates_unique": len(cands), "candidates_used": len(out),
              "candidates_surplus": len(surplus),
              "dropped_dedup": sum(1 for d in dropped if d["drop_reason"].startswith("dedup"))}
    return {"candidates": out, "dropped": dropped + surplus, "lists": lists, "counts": counts, "rounds": rounds,
            "usable_by_family": {f: sum(1 for c in out if c["family"] == f and c["usable"]) for f in fams}}
