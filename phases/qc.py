"""THE data-generation QC module: QC summary, gate checks and the automatic retry rule.

Imported by the QC-gate and merge steps; not runnable on its own. Tests:
`.venv/bin/pytest tests/unit/test_qc.py`. Rules and numbers: specs/stage1-data.md.

Input: one record per generated instruction (a dict, or any object with these attributes):

- ``instruction`` (str); ``instruction_verdict`` (critic verdict or None if not judged)
- response fields, absent/None when no response was generated for it (instruction rejected):
  ``raw_completion``, ``response`` (cleaned), ``raw_tokens``, ``cleaned_tokens`` (ints),
  ``hit_token_limit``, ``marker_found`` (bools), ``heuristic_cut`` (str or None),
  ``pair_verdict`` (critic verdict or None if not judged)

A critic verdict is a dict or object with ``label`` ("A"/"B"), ``margin`` (float >= 0),
``confident`` (bool) and optionally ``is_good``; good = label A (or is_good) AND confident,
bad = label B AND confident, low_confidence = not confident.

Definitions:
- *response record*: ``response`` is not None. Runaway, token-limit and marker-found rates are
  over response records.
- *kept*: instruction verdict passes (good; for a ``refusal_expected`` family, judged by the
  request-safety critic: not confidently safe to answer, `instruction_rule`), pair good,
  response non-empty, not runaway. (Dropping runaways
  is stricter than METHOD.md's "good AND confident".) End-marker leaks are deliberately NOT
  dropped here: cleaning removes full and truncated markers, so a leak in kept data means the
  cleaning was bypassed or misconfigured, and the zero-leak gate must see it and stop.
- instruction acceptance = instruction good / records judged by the instruction rubric
  (request-safety-judged records are counted apart in ``counts.instruction_rules``); pair acceptance = pair good / response
  records (both "of generated", METHOD.md).
- token stats (median, mean, p95 with linear interpolation, min, max) over raw tokens and
  cleaned tokens of response records, and cleaned tokens of kept records; the median gate is
  on kept (the data that will be trained on).
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable, Mapping

from phases.cleaning import is_runaway, marker_leaked, runaway_reason
from phases.prompts import END_MARKER

__all__ = [
    "QCThresholds",
    "MARGIN_BIN_EDGES",
    "RUNAWAY_STOP_STRINGS",
    "MAX_RETRIES",
    "verdict_class",
    "is_kept",
    "instruction_rule",
    "instruction_passes",
    "REQUEST_SAFETY",
    "hit_token_limit",
    "compute_qc",
    "RetryPlan",
    "plan_retry",
    "adjust_params",
]

SCHEMA = "qc_summary/v1"
MARGIN_BIN_EDGES: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
MAX_RETRIES = 2
RUNAWAY_STOP_STRINGS: tuple[str, ...] = ("\nInstruction:", "\nQ:", "\nUser:", "\nResponse:", "\nQuestion:")


def _limit(default: Any, lo: float | None = None, hi: float | None = None) -> Any:
    # Ranges read by the stage config's validator (`phases.stage_config`): declared once, here.
    return field(default=default, metadata={"lo": lo, "hi": hi, "lo_open": False, "choices": None, "doc": ""})


@dataclass(frozen=True)
class QCThresholds:
    """Gate thresholds (METHOD.md defaults). Rates are fractions in [0, 1].

    Strict ``<`` for the maxima given as "< x" in METHOD.md (runaway, token limit, median);
    ``>=`` for acceptance; ``<=`` for marker leaks (default 0: none allowed).

    The one declaration of these thresholds, their defaults and valid ranges: the stage's
    ``qc:`` section is this class plus ``max_retries`` (`phases.stage_config.QCConfig`); step
    params carry it as its JSON dict (a cache key needs JSON), read back by `from_params`.
    """

    max_runaway_rate: float = _limit(0.05, 0.0, 1.0)
    max_token_limit_rate: float = _limit(0.10, 0.0, 1.0)
    max_marker_leaks_kept: int = _limit(0, 0)
    max_median_cleaned_tokens: float = _limit(40.0, 0.0)
    min_instruction_acceptance: float = _limit(0.5, 0.0, 1.0)
    min_pair_acceptance: float = _limit(0.5, 0.0, 1.0)
    require_sentinels: bool = _limit(True)

    @classmethod
    def from_params(cls, qc: Mapping[str, Any]) -> "QCThresholds":
        """From a stage ``qc`` dict (extra keys such as ``max_retries`` are not thresholds)."""
        return cls(**{f.name: qc[f.name] for f in fields(cls) if f.name in qc})


def _get(rec: Any, name: str, default: Any = None) -> Any:
    if isinstance(rec, Mapping):
        return rec.get(name, default)
    return getattr(rec, name, default)


def verdict_class(verdict: Any) -> str | None:
    """"good", "bad", "low_confidence", or None when there is no verdict.

    Raises ``ValueError`` for a verdict without ``confident`` or without a label/is_good.
    """
    if verdict is None:
        return None
    confident = _get(verdict, "confident")
    label, is_good = _get(verdict, "label"), _get(verdict, "is_good")
    if confident is None or (label is None and is_good is None):
        raise ValueError(f"critic verdict needs 'confident' and 'label' (or 'is_good'), got {verdict!r}")
    if not confident:
        return "low_confidence"
    good = bool(is_good) if is_good is not None else label == "A"
    return "good" if good else "bad"


def hit_token_limit(raw_tokens: int, max_new_tokens: int, slack: int = 0) -> bool:
    """Whether a generation used its whole budget: ``raw_tokens >= max_new_tokens - slack``.

    Prefer the backend's finish reason when it has one; this is for backends that do not say.
    """
    return raw_tokens >= max_new_tokens - slack


# The ``rubric`` an instruction-side verdict carries when a ``refusal_expected`` family's
# instruction was judged by the request-safety critic (flipped sense, `instruction_rule`).
REQUEST_SAFETY = "request_safety"


def instruction_rule(v: Any, refusal_expected: bool) -> dict[str, Any]:
    """The instruction-side keep rule on one critic verdict, shared by the held-out, pilot and
    scale steps (`phases.steps.heldout`, `phases.steps.generation.build_records`).

    Ordinary families are judged with the ``instruction`` rubric (good = clear, achievable,
    safe): rejected when confidently bad, kept when confidently good, scored logp(A) - logp(B).
    A ``refusal_expected`` family's instructions are *meant* to be unsafe requests, which that
    rubric calls bad; they are judged with ``request_safety`` (A = safe to answer, B = should be
    declined) and the sense is flipped: rejected when confidently safe to answer (then it
    teaches/tests no refusal), kept when confidently "decline", scored logp(B) - logp(A).
    A verdict with ``test_override`` (the CAI_TEST_KEEP_ALL test hook: "keep everything") is
    kept in either sense.
    Returns ``{"reject", "keep", "score"}``.
    """
    a, b = float(_get(v, "logp_a")), float(_get(v, "logp_b"))
    if _get(v, "test_override"):
        return {"reject": False, "keep": True, "score": a - b}
    cls = verdict_class(v)
    if refusal_expected:
        return {"reject": cls == "good", "keep": cls == "bad", "score": b - a}
    return {"reject": cls == "bad", "keep": bool(_get(v, "keep")), "score": a - b}


def instruction_passes(v: Any) -> bool:
    """Whether a record's ``instruction_verdict`` lets it be kept (`is_kept`).

    A verdict with ``rubric: "request_safety"`` (a ``refusal_expected`` family) passes unless
    `instruction_rule` rejects it (the critic is confident the request is safe to answer); any
    other passes only when good. A verdict marked ``not_enforced`` (demo profiles:
    ``critics.enforce: false``) is recorded and counted in QC, but does not filter; a missing
    verdict still does.
    """
    if v is None:
        return False
    if _get(v, "not_enforced"):
        return True
    if _get(v, "rubric") == REQUEST_SAFETY:
        return not instruction_rule(v, True)["reject"]
    return verdict_class(v) == "good"


def is_kept(rec: Any) -> bool:
    """The keep rule (module docstring): instruction verdict passes (`instruction_passes`), pair
    good, non-empty, not runaway.

    A verdict with ``not_enforced: true`` (stage key ``critics.enforce: false``, demo profiles
    only) does not filter; QC acceptance still counts it by its real class.
    """
    text = _get(rec, "response")
    if not text or not text.strip():
        return False
    if not instruction_passes(_get(rec, "instruction_verdict")):
        return False
    v = _get(rec, "pair_verdict")
    # A verdict marked not_enforced (demo profiles: critics.enforce false) is recorded and
    # counted in QC acceptance, but does not filter; a missing verdict still does.
    if verdict_class(v) != "good" and not (v is not None and _get(v, "not_enforced")):
        return False
    return not is_runaway(text)


def _describe(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "median": None, "mean": None, "p95": None, "min": None, "max": None}
    xs = sorted(values)

    def pct(q: float) -> float:
        pos = (len(xs) - 1) * q
        lo, hi = math.floor(pos), math.ceil(pos)
        return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))

    return {"n": len(xs), "median": pct(0.5), "mean": round(sum(xs) / len(xs), 6), "p95": pct(0.95), "min": xs[0], "max": xs[-1]}


def _histogram(margins: Iterable[float]) -> dict[str, list]:
    counts = [0] * len(MARGIN_BIN_EDGES)
    for m in margins:
        i = max(k for k, edge in enumerate(MARGIN_BIN_EDGES) if m >= edge) if m >= 0 else 0
        counts[i] += 1
    labels = [f"[{a:g},{b:g})" for a, b in zip(MARGIN_BIN_EDGES, MARGIN_BIN_EDGES[1:])] + [f"[{MARGIN_BIN_EDGES[-1]:g},inf)"]
    return {"bins": labels, "counts": counts}


def _acceptance(verdicts: list[Any], denominator: int) -> dict[str, Any]:
    classes = Counter(verdict_class(v) for v in verdicts)
    good = classes["good"]
    return {
        "generated": denominator,
        "judged": denominator - classes[None],
        "good": good,
        "bad": classes["bad"],
        "low_confidence": classes["low_confidence"],
        "not_judged": classes[None],
        "rate": round(good / denominator, 6) if denominator else None,
        "margin_histogram": _histogram(float(_get(v, "margin", 0.0)) for v in verdicts if v is not None),
        "margin_histogram_by_label": {
            lab: _histogram(float(_get(v, "margin", 0.0)) for v in verdicts if v is not None and _get(v, "label") == lab)
            for lab in ("A", "B")
        },
    }


def compute_qc(
    records: list[Any],
    thresholds: QCThresholds | None = None,
    sentinels_passed: bool | None = None,
    end_marker: str = END_MARKER,
    extra_counts: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """QC summary (METHOD.md "Manifests → QC summary") plus gate checks; JSON-ready.

    ``sentinels_passed``: the model loader's contamination sentinel result; None means unknown,
    which fails the gate when ``thresholds.require_sentinels``. ``extra_counts`` (e.g. the
    instruction parser's drop counts) are copied into ``counts`` under their own names.
    Shape: ``{"schema", "counts", "rates", "acceptance": {"instruction", "pair"}, "tokens":
    {"raw", "cleaned", "cleaned_kept"}, "runaway_by_pattern", "heuristic_cut_by_rule",
    "checks": [{"name", "value", "op", "threshold", "passed"}], "thresholds",
    "thresholds_passed", "failed_reasons"}``. An empty ``records`` fails every rate check with
    a reason instead of dividing by zero.
    """
    th = thresholds or QCThresholds()
    responses = [r for r in records if _get(r, "response") is not None]
    n, nr = len(records), len(responses)
    runaway_names = [runaway_reason(_get(r, "response")) for r in responses]
    leaks_all = sum(marker_leaked(_get(r, "response"), end_marker) for r in responses)
    kept = [r for r in responses if is_kept(r)]
    leaks_kept = sum(marker_leaked(_get(r, "response"), end_marker) for r in kept)
    marker_found = sum(bool(_get(r, "marker_found")) for r in responses)
    cuts = Counter(_get(r, "heuristic_cut") for r in responses if _get(r, "heuristic_cut"))
    limit_hits = sum(bool(_get(r, "hit_token_limit")) for r in responses)
    runaway = sum(name is not None for name in runaway_names)
    counts = {
        "generated": n,
        "responses": nr,
        "kept": len(kept),
        "empty_responses": sum(not (_get(r, "response") or "").strip() for r in responses),
        "marker_found": marker_found,
        "marker_missing": nr - marker_found,
        "heuristic_cut": sum(cuts.values()),
        "token_limit_hits": limit_hits,
        "runaway": runaway,
        "marker_leaks_all": leaks_all,
        "marker_leaks_kept": leaks_kept,
    }
    for key, value in (extra_counts or {}).items():
        if key in counts:
            raise ValueError(f"extra_counts key {key!r} collides with a QC count; rename it")
        counts[key] = value
    rate = lambda k, d: round(k / d, 6) if d else None  # noqa: E731
    rates = {"runaway": rate(runaway, nr), "token_limit": rate(limit_hits, nr), "marker_found": rate(marker_found, nr), "kept_of_generated": rate(len(kept), n)}
    # Instructions of refusal_expected families are judged by the request-safety rule (flipped
    # sense, `instruction_rule`): their verdicts are counted apart, never as instruction "good".
    by_safety = [r for r in records if _get(_get(r, "instruction_verdict") or {}, "rubric") == REQUEST_SAFETY]
    ordinary = [r for r in records if _get(_get(r, "instruction_verdict") or {}, "rubric") != REQUEST_SAFETY]
    safety_pass = sum(instruction_passes(_get(r, "instruction_verdict")) for r in by_safety)
    counts["instruction_rules"] = {
        "instruction": {"judged": sum(_get(r, "instruction_verdict") is not None for r in ordinary),
                        "kept": sum(instruction_passes(_get(r, "instruction_verdict")) for r in ordinary),
                        "dropped": sum(not instruction_passes(_get(r, "instruction_verdict")) for r in ordinary)},
        REQUEST_SAFETY: {"judged": len(by_safety), "kept": safety_pass, "dropped": len(by_safety) - safety_pass},
    }
    acceptance = {
        "instruction": _acceptance([_get(r, "instruction_verdict") for r in ordinary], len(ordinary)),
        "pair": _acceptance([_get(r, "pair_verdict") for r in responses], nr),
    }
    tokens = {
        "raw": _describe([float(_get(r, "raw_tokens")) for r in responses if _get(r, "raw_tokens") is not None]),
        "cleaned": _describe([float(_get(r, "cleaned_tokens")) for r in responses if _get(r, "cleaned_tokens") is not None]),
        "cleaned_kept": _describe([float(_get(r, "cleaned_tokens")) for r in kept if _get(r, "cleaned_tokens") is not None]),
    }
    checks = [
        ("runaway_rate", rates["runaway"], "<", th.max_runaway_rate),
        ("token_limit_rate", rates["token_limit"], "<", th.max_token_limit_rate),
        ("marker_leaks_kept", leaks_kept, "<=", th.max_marker_leaks_kept),
        ("median_cleaned_tokens_kept", tokens["cleaned_kept"]["median"], "<", th.max_median_cleaned_tokens),
        ("instruction_acceptance", acceptance["instruction"]["rate"], ">=", th.min_instruction_acceptance),
        ("pair_acceptance", acceptance["pair"]["rate"], ">=", th.min_pair_acceptance),
    ]
    if th.require_sentinels:
        checks.append(("sentinels_passed", sentinels_passed, "==", True))
    out_checks, failed = [], []
    for name, value, op, limit in checks:
        if value is None:
            ok = False
            failed.append(f"{name}: not measurable (no data{' or sentinel result missing' if name == 'sentinels_passed' else ''})")
        else:
            ok = {"<": value < limit, "<=": value <= limit, ">=": value >= limit, "==": value == limit}[op]
            if not ok:
                failed.append(f"{name}: {value} (needs {op} {limit})")
        out_checks.append({"name": name, "value": value, "op": op, "threshold": limit, "passed": ok})
    return {
        "schema": SCHEMA,
        "counts": counts,
        "rates": rates,
        "acceptance": acceptance,
        "tokens": tokens,
        "runaway_by_pattern": dict(sorted(Counter(x for x in runaway_names if x).items())),
        "heuristic_cut_by_rule": dict(sorted(cuts.items())),
        "checks": out_checks,
        "thresholds": asdict(th),
        "thresholds_passed": not failed,
        "failed_reasons": failed,
    }


@dataclass(frozen=True)
class RetryPlan:
    """What `plan_retry` decided: new params, the rule lines applied, and whether retrying can help."""

    params: dict
    changes: list[str]
    retryable: bool


def _failed(qc: Mapping[str, Any]) -> set[str]:
    return {c["name"] for c in qc.get("checks", []) if not c["passed"]}


def _add_stops(section: dict, stops: Iterable[str], changes: list[str], where: str) -> None:
    current = list(section.get("stop") or [])
    new = [s for s in stops if s not in current]
    if new:
        section["stop"] = current + new
        changes.append(f"{where}.stop += {new}")


def _lower(section: dict, key: str, by: float, floor: float, changes: list[str], where: str) -> None:
    old = section.get(key)
    if old is None:
        return
    new = round(max(floor, old - by), 4)
    if new != old:
        section[key] = new
        changes.append(f"{where}.{key}: {old} -> {new}")


def plan_retry(gen_params: Mapping[str, Any], qc: Mapping[str, Any], attempt: int, end_marker: str = END_MARKER) -> RetryPlan:
    """The automatic retry rule. ``gen_params`` is the stage's ``generation`` section as a dict
    (``{"instructions": {...sampling...}, "responses": {...sampling...}, ...}``); ``attempt`` is
    the retry number (1 or 2). Input is not mutated. Rules, applied for each failed check:

    - runaway_rate → responses: add `RUNAWAY_STOP_STRINGS` and the end marker to ``stop``;
      temperature −0.1 (floor 0.2).
    - token_limit_rate → responses: add the same stop strings; max_new_tokens ×1.5 (rounded,
      cap 256) so answers can reach their end marker (cleaning cuts long text anyway; lowering
      the budget would only raise the hit rate).
    - median_cleaned_tokens_kept → responses: temperature −0.1 (floor 0.2); max_new_tokens ×0.75
      (floor 32) unless token_limit_rate failed too (then the budget rule above wins).
    - marker_leaks_kept → responses: add the end marker to ``stop`` (and look at cleaning).
    - instruction_acceptance → instructions: temperature −0.1 (floor 0.3).
    - pair_acceptance → responses: temperature −0.1 (floor 0.2).
    - sentinels_passed → not retryable (a contamination problem: no parameter fixes it).

    ``retryable`` is False when the sentinels failed, when nothing failed, when no rule changed
    anything (all at their floors/caps), or when ``attempt`` > `MAX_RETRIES`: the gate then
    waits for a decision. Raises ``ValueError`` for ``attempt`` < 1.
    """
    if not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"retry attempt must be an int >= 1, got {attempt!r}")
    params = copy.deepcopy(dict(gen_params))
    failed = _failed(qc)
    changes: list[str] = []
    if not failed:
        return RetryPlan(params, ["nothing failed"], False)
    if "sentinels_passed" in failed:
        return RetryPlan(params, ["contamination sentinels failed: not retryable, stop for review"], False)
    if attempt > MAX_RETRIES:
        return RetryPlan(params, [f"attempt {attempt} > {MAX_RETRIES} retries: stop for review"], False)
    resp = params.setdefault("responses", {})
    inst = params.setdefault("instructions", {})
    stops = list(RUNAWAY_STOP_STRINGS) + ([end_marker] if end_marker else [])
    if "runaway_rate" in failed:
        _add_stops(resp, stops, changes, "responses")
        _lower(resp, "temperature", 0.1, 0.2, changes, "responses")
    if "token_limit_rate" in failed:
        _add_stops(resp, stops, changes, "responses")
        old = resp.get("max_new_tokens")
        if old is not None and min(256, round(old * 1.5)) != old:
            resp["max_new_tokens"] = min(256, round(old * 1.5))
            changes.append(f"responses.max_new_tokens: {old} -> {resp['max_new_tokens']}")
    if "median_cleaned_tokens_kept" in failed:
        if "runaway_rate" not in failed:
            _lower(resp, "temperature", 0.1, 0.2, changes, "responses")
        old = resp.get("max_new_tokens")
        if "token_limit_rate" not in failed and old is not None and max(32, round(old * 0.75)) != old:
            resp["max_new_tokens"] = max(32, round(old * 0.75))
            changes.append(f"responses.max_new_tokens: {old} -> {resp['max_new_tokens']}")
    if "marker_leaks_kept" in failed and end_marker:
        _add_stops(resp, [end_marker], changes, "responses")
    if "instruction_acceptance" in failed:
        _lower(inst, "temperature", 0.1, 0.3, changes, "instructions")
    if "pair_acceptance" in failed and not {"runaway_rate", "median_cleaned_tokens_kept"} & failed:
        _lower(resp, "temperature", 0.1, 0.2, changes, "responses")
    if not changes:
        return RetryPlan(params, [f"failed {sorted(failed)} but every rule is at its floor/cap: stop for review"], False)
    return RetryPlan(params, changes, True)


def adjust_params(gen_params: dict, qc: dict, attempt: int) -> dict:
    """New generation params for retry ``attempt`` (1..`MAX_RETRIES`) by the rules of `plan_retry`.

    Raises ``ValueError`` when a retry cannot help (see `plan_retry`): the caller stops and the
    gate waits for a decision.
    """
    plan = plan_retry(gen_params, qc, attempt)
    if not plan.retryable:
        raise ValueError(f"no automatic retry: {'; '.join(plan.changes)}")
    return plan.params
