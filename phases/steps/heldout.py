"""Step `heldout`: the held-out evaluation set, made FIRST, with its own seed, before any
training data; every later dataset is checked against it (exact and near-duplicate).

Runs inside the pipeline: ``runner run --config phases/stages/demo.yaml`` (step 2 of cai-stage1).

How: instruction lists are generated with the canonical numbered-list builder exactly like
training instructions, but every seed derives from ``heldout.seed`` (not the run seed), so the
set is the same for every run seed. Each family gets a quota of ``heldout.size`` (by weight,
largest remainder) and every generation prompt is *assigned* a family (not drawn), so a small
set still asks every family: round 0 asks each family for quota x over_generation candidates;
families with fewer usable candidates than their quota get rounds of their own, up to
``heldout.max_family_rounds`` rounds in all (`phases.steps.generation.collect_by_family`). Candidates are parsed, deduped (also against
the seed instructions) and judged per round: ordinary families by the instruction critic,
``refusal_expected`` families by the ``request_safety`` critic with the sense flipped (they
are meant to be requests to decline; `phases.qc.instruction_rule`, shared with pilot and scale). Confidently bad ones are dropped;
critic-kept ones come first and, if too few, the rest by the critic's score (counted as
``below_keep_bar_used``); they are taken per family up to its quota, then the places of a
family that came out short are filled from the others, and the manifest says so
(``quota_by_family``, ``shortfall_by_family``, ``usable_by_family``, ``generation_rounds``;
one log line per short family).
Each gets ONE verifiable constraint appended, drawn seeded from `CONSTRAINTS` (IFEval ids and
kwargs, validated by `phases.ifeval.registry.validate_kwargs`, so `phases.ifeval` scores it).

Outputs: ``heldout.jsonl`` (records below), ``dropped.jsonl`` (candidates not used, with the
reason), ``manifest.json`` (file sha256, per-record sha256, counts, seeds, environment, loader).
Record: ``id`` ("ho-0001"), ``key`` (int, IFEval), ``family``, ``refusal_expected``,
``base_instruction``, ``constraint`` (its text), ``instruction`` (= base + " " + constraint),
``prompt`` (= instruction; IFEval field name), ``instruction_id_list``, ``kwargs`` (IFEval
format), ``instruction_verdict`` (critic), ``sha256`` (of the record without this field).
"""
from __future__ import annotations

import random

from phases.checks import draw
from phases.ifeval.registry import validate_kwargs
from phases.pieces import CRITIC_INSTRUCTION, CRITIC_REQUEST_SAFETY, DEDUP, IFEVAL, INSTRUCTION_PARSING, QC, builder_param
from phases.steps import sizes
from phases.steps.common import dump, record_hash, session_manifest, write_records
from phases.steps.generation import collect_by_family, instruction_rule, judge_items, weighted_quotas
from phases.steps.model import open_model
from runner import step
from runner.errors import DataError
from runner.pipeline import derive_seed

KEYWORD_POOL = ("simple", "example", "important", "clear", "today", "because", "detail", "result")
END_PHRASES = ("Is there anything else I can help with?", "That is all.", "Hope this helps.")


def _lowercase(rng):
    return ("Your entire response should be in English, and in all lowercase letters. No capital letters are allowed.",
            "change_case:english_lowercase", {})


def _max_words(rng):
    n = rng.choice((25, 40, 60))
    return (f"Answer with less than {n} words.", "length_constraints:number_words",
            {"num_words": n, "relation": "less than"})


def _min_words(rng):
    n = rng.choice((15, 25))
    return (f"Answer with at least {n} words.", "length_constraints:number_words",
            {"num_words": n, "relation": "at least"})


def _keywords(rng):
    ks = rng.sample(KEYWORD_POOL, 2)
    return (f"Include the keywords {ks[0]} and {ks[1]} in the response.", "keywords:existence", {"keywords": ks})


def _no_comma(rng):
    return ("In your entire response, refrain from the use of any commas.", "punctuation:no_comma", {})


def _end_phrase(rng):
    ph = rng.choice(END_PHRASES)
    return (f"Finish your response with this exact phrase: {ph} No other words should follow this phrase.",
            "startend:end_checker", {"end_phrase": ph})


def _bullets(rng):
    n = rng.choice((2, 3, 4))
    return (f"Your answer must contain exactly {n} bullet points. Use markdown bullet points such as: * This is a point.",
            "detectable_format:number_bullet_lists", {"num_bullets": n})


#: name -> template(rng) -> (text, IFEval instruction id, kwargs). One is drawn per record.
CONSTRAINTS = {"lowercase": _lowercase, "max_words": _max_words, "min_words": _min_words, "keywords": _keywords,
               "no_comma": _no_comma, "end_phrase": _end_phrase, "bullets": _bullets}


def draw_constraint(seed: int, checks: list[dict] | None = None) -> dict:
    """One constraint, drawn deterministically from ``seed``; kwargs validated for IFEval.

    ``checks``: the stage's ``checks:`` (validated `phases.checks` specs); empty or None = the
    stage-1 set `CONSTRAINTS` (unchanged draws, so stage-1 held-out sets stay byte-identical).
    """
    rng = random.Random(seed)
    if checks:
        spec = checks[rng.randrange(len(checks))]
        inst = draw(spec, rng)
        validate_kwargs(inst["instruction_id"], inst["kwargs"], where=f"held-out check {spec['name']}")
        return {"name": spec["name"], "text": inst["text"], "instruction_id": inst["instruction_id"],
                "kwargs": inst["kwargs"]}
    name = rng.choice(sorted(CONSTRAINTS))
    text, iid, kwargs = CONSTRAINTS[name](rng)
    validate_kwargs(iid, kwargs, where=f"held-out constraint {name}")
    return {"name": name, "text": text, "instruction_id": iid, "kwargs": kwargs}


def quotas(families: dict, size: int) -> dict[str, int]:
    """Per-family counts proportional to weight (largest remainder, ties by name)."""
    return weighted_quotas({f: float(families[f].get("weight", 1.0)) for f in families}, size)


def select_balanced(cands: list[dict], q: dict[str, int], size: int) -> list[dict]:
    """Up to quota per family in candidate order, then fill from the rest in order."""
    taken, per = set(), {f: 0 for f in q}
    for c in cands:
        if per.get(c["family"], 0) < q.get(c["family"], 0):
            taken.add(c["id"])
            per[c["family"]] += 1
    rest = [c["id"] for c in cands if c["id"] not in taken]
    taken |= set(rest[: max(0, size - len(taken))])
    return [c for c in cands if c["id"] in taken][:size]


def family_shortfall(q: dict[str, int], chosen: list[dict]) -> dict[str, int]:
    """Families that got fewer items than their quota -> how many fewer (only those)."""
    got = {f: 0 for f in q}
    for c in chosen:
        got[c["family"]] = got.get(c["family"], 0) + 1
    return {f: q[f] - got[f] for f in sorted(q) if got[f] < q[f]}


# The held-out keep rule is the shared instruction-side rule of pilot and scale too (one
# function, phases.qc.instruction_rule); kept under its old name.
heldout_verdict = instruction_rule


HELDOUT_DEFAULTS = {"families": {}, "seeds": {}, "list_header": "", "instruction_builder": "numbered_list",
                    "instruction_generation": {}, "critics": {}, "batch_size": 16, "instructions": {},
                    "heldout": {}, "checks": []}


@step(inputs=["prepare_model"], outputs=["heldout.jsonl", "manifest.json"], version="2", params=HELDOUT_DEFAULTS,
      uses=[CRITIC_INSTRUCTION, CRITIC_REQUEST_SAFETY, builder_param("instruction_builder"), INSTRUCTION_PARSING,
            DEDUP, IFEVAL, QC],  # QC: the keep rule, phases.qc.instruction_rule
      gpu=True, size=sizes.heldout_items)
def heldout(ctx):
    """Generate the held-out evaluation set first, with its own seed, typed by family."""
    p = ctx.params
    if not p["families"]:
        raise DataError("step heldout has no families; run it with a stage config (e.g. phases/stages/demo.yaml)")
    size, hseed = int(p["heldout"]["size"]), int(p["heldout"]["seed"])
    base = derive_seed(hseed, "heldout")
    model, info = open_model(ctx, p["batch_size"])
    over = float(p["instruction_generation"].get("over_generation", 1.5))
    q = quotas(p["families"], size)
    refusal = {f for f in p["families"] if p["families"][f].get("refusal_expected", False)}
    th, bs = float(p["critics"]["threshold"]), p["batch_size"]

    def assess(new: list[dict], key: str) -> list[dict]:
        # each candidate is judged once (a ledger per call); refusal families by request_safety
        out = {}
        for rubric, group in (("instruction", [c for c in new if c["family"] not in refusal]),
                              ("request_safety", [c for c in new if c["family"] in refusal])):
            if not group:
                continue
            vs = judge_items(ctx, model, rubric, [c["instruction"] for c in group], th, bs,
                             f"ho-{hseed}-{'icritic' if rubric == 'instruction' else 'scritic'}-{key}")
            for c, v in zip(group, vs):
                hv = instruction_rule(v, c["family"] in refusal)
                out[c["id"]] = {**c, "instruction_verdict": {**v, "rubric": rubric}, "heldout_keep": hv["keep"],
                                "heldout_score": hv["score"], "usable": not hv["reject"]}
        return [out[c["id"]] for c in new]

    # Every family is asked for its quota times over_generation usable candidates; families that
    # cannot fill their quota get rounds of their own, up to heldout.max_family_rounds in all.
    got = collect_by_family(ctx, model, p, p["instructions"], seed_base=base, tag=f"ho-{hseed}", id_prefix="ho",
                            targets={f: int(k * over + 0.999) for f, k in q.items()}, required=q, assess=assess,
                            max_rounds=int(p["heldout"].get("max_family_rounds", 3)))
    judged = got["candidates"]
    if not judged:
        raise DataError(f"held-out: instruction generation produced no usable instruction "
                        f"(parse counts: {got['counts']}); look at the completions in the ledger and at "
                        "instruction_generation / generation.instructions params")
    # Confidently bad instructions never enter the held-out set. Critic-kept ones come first; if
    # they are too few (a small model's critic is rarely confident), the rest follow by the
    # critic's score. The manifest counts how many were below the keep bar.
    rejected = [{**c, "drop_reason": "critic_bad"} for c in judged if not c["usable"]]
    eligible = [c for c in judged if c["usable"]]
    eligible.sort(key=lambda c: (not c["heldout_keep"], -c["heldout_score"]))
    good = [c for c in eligible if c["heldout_keep"]]
    if not eligible:
        raise DataError(f"held-out: the critic judged all {len(judged)} candidates confidently bad; "
                        "look at dropped.jsonl, the seeds and generation.instructions")
    chosen = select_balanced(eligible, q, size)
    short = family_shortfall(q, chosen)
    records = []
    for i, c in enumerate(chosen):
        con = draw_constraint(derive_seed(hseed, "constraint", i), p.get("checks"))
        instr = f"{c['instruction'].rstrip()} {con['text']}"
        rec = {"id": f"ho-{i + 1:04d}", "key": i + 1, "family": c["family"],
               "refusal_expected": bool(p["families"][c["family"]].get("refusal_expected", False)),
               "base_instruction": c["instruction"], "constraint": con["text"], "constraint_name": con["name"],
               "instruction": instr, "prompt": instr, "instruction_id_list": [con["instruction_id"]],
               "kwargs": [con["kwargs"]], "source_id": c["id"], "instruction_verdict": c["instruction_verdict"]}
        rec["sha256"] = record_hash(rec)
        records.append(rec)
    chosen_ids = {c["id"] for c in chosen}
    dropped = got["dropped"] + rejected + [{**c, "drop_reason": "surplus"} for c in eligible if c["id"] not in chosen_ids]
    file_sha = write_records(ctx.out_dir / "heldout.jsonl", records)
    write_records(ctx.out_dir / "dropped.jsonl", dropped)
    by_family = {}
    for r in records:
        by_family[r["family"]] = by_family.get(r["family"], 0) + 1
    counts = {**got["counts"], "critic_kept": len(good), "critic_rejected": len(rejected),
              "below_keep_bar_used": sum(1 for c in chosen if not c["heldout_keep"]), "records": len(records),
              "shortfall": max(0, size - len(records)), "by_family": by_family, "quota_by_family": q,
              "usable_by_family": {f: sum(1 for c in eligible if c["family"] == f) for f in sorted(q)},
              "shortfall_by_family": short, "generation_rounds": got["rounds"]}
    for f, n in short.items():
        ctx.log(f"held-out family {f}{' (refusal_expected)' if f in refusal else ''} is {n} short of its quota "
                f"{q[f]} ({counts['usable_by_family'][f]} usable candidates after {len(got['rounds'])} generation "
                f"round(s), heldout.max_family_rounds); other families filled its places; see manifest counts")
    if len(records) < size or counts["below_keep_bar_used"]:
        ctx.log(f"held-out has {len(records)} of {size} records; {counts['below_keep_bar_used']} below the critic's "
                f"keep bar (critic kept {len(good)}); see manifest counts")
    dump(ctx.out_dir / "manifest.json", session_manifest(
        ctx, "heldout", info, {"heldout.jsonl": file_sha}, counts,
        heldout_seed=hseed, record_sha256={r["id"]: r["sha256"] for r in records},
        constraints=({name: fn.__name__ for name, fn in CONSTRAINTS.items()} if not p.get("checks")
                     else {"registry": "phases.checks", "checks": p["checks"]})))
    return {"records": len(records), "by_family": by_family, "sha256": file_sha, "heldout_seed": hseed}
