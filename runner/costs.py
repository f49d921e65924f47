"""The cost ledger in dollars and the budget gate.

Read by `runner status` (so: standard library and the state store only, no heavy imports).

Config keys (top level of a run config or a stage YAML)::

    budget: 300                      # USD for the whole experiment (METHOD.md); absent = no check
    prices:
      gpu_usd_per_hour: 2.5          # what the rented accelerator costs per hour
      llm_usd_per_mtok_in: 1.25      # reviewer prompt tokens, USD per million
      llm_usd_per_mtok_out: 10.0     # reviewer completion tokens, USD per million

What is counted:
- ``gpu_s`` per attempt of every step declared ``@step(gpu=True)``: the step holds the
  accelerator for its whole attempt, so the engine records the attempt's wall seconds when it
  ends (succeeded or failed), unless the step recorded its own ``gpu_s`` for that attempt (SFT
  and evaluation measure theirs). On a CPU-only machine this is the machine's time, priced at
  ``gpu_usd_per_hour`` all the same (set it to 0 there if that is wrong for you).
- ``units`` per attempt: the step's declared size (``@step(size=fn)``), so a rate in GPU-seconds
  per unit can be measured.
- every LLM review: its tokens, and its dollars (the backend's own ``cost_usd`` when it reported
  one, else tokens x the configured prices).

The budget check (before each GPU step; `check_budget`): projected cost of the step + spent >
budget stops the run at the gate ``budget`` (policy human) with the numbers. The projection is
the step's declared size x its measured GPU-seconds per unit from earlier attempts in this run,
or the mean GPU-seconds of its earlier attempts when it declares no size; a step never measured
projects $0 (said so in the gate's numbers), so the check then stops only when spent alone is
over. `runner approve budget` accepts the overrun for that step; raising ``budget`` in the
config and resuming passes the check instead.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

from runner.errors import ConfigError
from state.files import canonical_json, sha256_text

BUDGET_GATE = "budget"
DEFAULT_PRICES = {"gpu_usd_per_hour": 2.5, "llm_usd_per_mtok_in": 1.25, "llm_usd_per_mtok_out": 10.0}


def validate_cost_keys(cfg: Mapping[str, Any], source: str) -> None:
    """Raise ConfigError naming the file and key for a malformed ``budget`` or ``prices``."""
    b = cfg.get("budget")
    if b is not None and (isinstance(b, bool) or not isinstance(b, (int, float)) or b < 0):
        raise ConfigError(f"{source}: 'budget' must be a number of US dollars >= 0 (e.g. budget: 300), got {b!r}")
    p = cfg.get("prices")
    if p is None:
        return
    if not isinstance(p, dict):
        raise ConfigError(f"{source}: 'prices' must be a mapping with keys {', '.join(DEFAULT_PRICES)}, got {p!r}")
    for k, v in p.items():
        if k not in DEFAULT_PRICES:
            raise ConfigError(f"{source}: prices.{k}: unknown key; allowed: {', '.join(DEFAULT_PRICES)}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ConfigError(f"{source}: prices.{k} must be a number >= 0 (US dollars), got {v!r}")


def prices_of(config: Mapping[str, Any]) -> dict[str, float]:
    return {**DEFAULT_PRICES, **{k: float(v) for k, v in (config.get("prices") or {}).items()}}


def _review_usd(r: Any, prices: Mapping[str, float]) -> float:
    if r.cost_usd is not None:
        return float(r.cost_usd)
    return (r.tokens_in * prices["llm_usd_per_mtok_in"] + r.tokens_out * prices["llm_usd_per_mtok_out"]) / 1e6


def cost_ledger(store: Any, run_id: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """Spent vs budget, from the DB alone: ``{"steps": {step: {wall_s, gpu_s, usd}}, "reviews":
    {n, tokens_in, tokens_out, usd}, "prices", "spent_usd", "budget_usd" (None = no budget),
    "remaining_usd"}``. Dollars: gpu_s x price per hour / 3600, plus any ``usd`` a step recorded."""
    prices = prices_of(config)
    totals = store.cost_totals(run_id)
    steps: dict[str, dict[str, float]] = {}
    for step, kinds in totals.items():
        if step == "(run)":  # review tokens/dollars: counted from the reviews table below
            continue
        gpu_s = kinds.get("gpu_s", 0.0)
        steps[step] = {"wall_s": round(kinds.get("wall_s", 0.0), 2), "gpu_s": round(gpu_s, 2),
                       "usd": round(gpu_s / 3600 * prices["gpu_usd_per_hour"] + kinds.get("usd", 0.0), 6)}
    reviews = store.reviews(run_id)
    rv = {"n": len(reviews), "tokens_in": sum(r.tokens_in for r in reviews),
          "tokens_out": sum(r.tokens_out for r in reviews),
          "usd": round(sum(_review_usd(r, prices) for r in reviews), 6)}
    spent = round(sum(s["usd"] for s in steps.values()) + rv["usd"], 6)
    budget = config.get("budget")
    return {"steps": steps, "reviews": rv, "prices": prices, "spent_usd": spent,
            "gpu_hours": round(sum(s["gpu_s"] for s in steps.values()) / 3600, 4),
            "budget_usd": None if budget is None else float(budget),
            "remaining_usd": None if budget is None else round(float(budget) - spent, 6)}


def _attempt_costs(store: Any, run_id: str, step: str) -> dict[int, dict[str, float]]:
    from sqlmodel import select

    from state.schema import Cost  # lazy: sqlmodel; `runner status` reads costs without it
    with store.db.read() as s:
        rows = s.exec(select(Cost).where(Cost.run_id == run_id, Cost.step == step)).all()
    out: dict[int, dict[str, float]] = {}
    for c in rows:
        if c.attempt_id is not None:
            d = out.setdefault(c.attempt_id, {})
            d[c.kind] = d.get(c.kind, 0.0) + c.amount
    return out


def record_gpu_time(store: Any, fence: Any, attempt: Any, spec: Any, units: Optional[float]) -> None:
    """At the end of an attempt of a GPU step: its GPU-seconds (unless the step recorded its own)
    and its size in units. ``attempt`` is the attempt row as started (``started_at`` set)."""
    if not getattr(spec, "gpu", False):
        return
    import time
    mine = _attempt_costs(store, attempt.run_id, attempt.step).get(attempt.id, {})
    if not mine.get("gpu_s"):
        store.add_cost(fence, "gpu_s", round(time.time() - attempt.started_at, 3), step=attempt.step,
                       attempt_id=attempt.id)
    if units is not None and not mine.get("units"):
        store.add_cost(fence, "units", float(units), step=attempt.step, attempt_id=attempt.id)


def project_gpu_s(store: Any, run_id: str, step: str, units: Optional[float]) -> tuple[float, str]:
    """(projected GPU-seconds of the step's next attempt, how it was projected)."""
    measured = [c for c in _attempt_costs(store, run_id, step).values() if c.get("gpu_s")]
    sized = [c for c in measured if c.get("units")]
    if units is not None and sized:
        rate = sum(c["gpu_s"] for c in sized) / sum(c["units"] for c in sized)
        return rate * units, (f"{units:g} units x {rate:.4g} GPU-s/unit measured over {len(sized)} "
                              f"earlier attempt(s) of {step}")
    if measured:
        mean = sum(c["gpu_s"] for c in measured) / len(measured)
        return mean, f"mean GPU-seconds of {len(measured)} earlier attempt(s) of {step}"
    return 0.0, f"{step} has no measured attempt in this run yet (projected $0)"


def step_units(spec: Any, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> Optional[float]:
    """The step's declared size (``@step(size=fn)``, ``fn(inputs, params) -> number``) or None.
    A size function that fails is reported as None: the budget check must not break a run."""
    fn = getattr(spec, "size", None)
    if fn is None:
        return None
    try:
        return float(fn(inputs, params))
    except Exception:  # noqa: BLE001 - a missing input file etc.: no size, projection says so
        return None


def check_budget(engine: Any, spec: Any, key: str, params: Mapping[str, Any],
                 inputs: Mapping[str, Any]) -> Optional[tuple[str, str, dict]]:
    """Before a GPU step: None to go on, or ("approved"|"rejected"|"wait", message, numbers).

    A wait records a pending ``budget`` gate whose key covers (step, cache key, budget), so an
    approval accepts this overrun for this step only, and a raised budget is a new check.
    """
    budget = engine.config.get("budget")
    if budget is None or not getattr(spec, "gpu", False):
        return None
    store, run_id = engine.store, engine.run_id
    ledger = cost_ledger(store, run_id, engine.config)
    units = step_units(spec, inputs, params)
    proj_s, basis = project_gpu_s(store, run_id, spec.name, units)
    proj_usd = proj_s / 3600 * ledger["prices"]["gpu_usd_per_hour"]
    numbers = {"step": spec.name, "budget_usd": float(budget), "spent_usd": ledger["spent_usd"],
               "projected_usd": round(proj_usd, 6), "projected_gpu_s": round(proj_s, 2), "basis": basis,
               "gpu_usd_per_hour": ledger["prices"]["gpu_usd_per_hour"],
               "total_if_run_usd": round(ledger["spent_usd"] + proj_usd, 6)}
    if ledger["spent_usd"] + proj_usd <= float(budget):
        return None
    gate_key = sha256_text(canonical_json({"gate": BUDGET_GATE, "step": spec.name, "key": key,
                                           "budget": float(budget)}))
    row = store.gate(run_id, BUDGET_GATE, gate_key)
    if row is not None and row.status in ("approved", "rejected"):
        return (row.status, f"budget overrun before {spec.name} was {row.status} by {row.decided_by}"
                + (f": {row.note}" if row.note else ""), numbers)
    reason = (f"{spec.name} would take the run over budget: spent ${numbers['spent_usd']:.4f} + projected "
              f"${numbers['projected_usd']:.4f} ({basis}) = ${numbers['total_if_run_usd']:.4f} > budget "
              f"${float(budget):.2f}. Approve to accept the overrun for this step, or raise 'budget' in the "
              "config and resume")
    check = {"passed": False, "summary": numbers, "reasons": [reason]}
    store.request_gate(engine.fence, BUDGET_GATE, gate_key, "human", check, reason)
    store.event(run_id, "budget_stop", reason, fence=engine.fence, step=spec.name, gate=BUDGET_GATE, data=numbers)
    return ("wait", reason, numbers)


def budget_plan_node(config: Mapping[str, Any]) -> Optional[dict]:
    """The ``budget`` gate as a plan node (so status/show/approve know it), when a budget is set."""
    if config.get("budget") is None:
        return None
    return {"kind": "gate", "name": BUDGET_GATE, "policy": "human",
            "criteria": ["Spent plus the next GPU step's projected cost stays within the budget"],
            "description": "Before any step that holds the GPU (added by the 'budget' config key)"}
