"""What the run report shows, gathered from the state DB and the committed artifacts only.

Used by `runner report` (runner/report.py). Nothing here knows the pipeline's step names: every
step in the run's stored plan is looked at the same way, and what is shown is found in its
committed output folder by shape, so steps added later (DPO, stage 2, ...) appear without code
changes:

- a JSON document with ``acceptance``/``counts``/``rates`` (a QC summary, phases/qc.py): its
  numbers, and the critic-margin histograms it carries per critic and label;
- a ``loss_curve`` key ``{"train": [{"step","loss"}], "eval": [{"step","eval_loss"}]}`` anywhere at
  the top of a JSON document (the training manifest), or a JSONL whose rows have ``step`` and
  ``loss``: a loss curve;
- a JSON document with ``comparison.per_type`` (eval/v1, specs/sft-evaluation.md): the forest
  plot of per-type lifts with their CIs, the arms side by side (rate, CI, truncation, tokens);
- a JSONL of records: histograms of its numeric length fields (``*tokens``, ``*_len``, ``*length``,
  ``*words``; split kept/rejected when rows carry a kept flag) and of every critic verdict's
  ``margin``, one plot per critic field and label order (the combined verdict and each nested
  per-order verdict such as ``ab``/``ba``), one series per label; a sample of kept and rejected
  records;
- PNG files: embedded as they are; a ``tensorboard/`` folder: named with its command;
- provenance keys (``git_sha``, ``model_id``, ``model_revision``, ``seed``, ...) in any manifest.

Safe while a runner writes: only committed (immutable) step folders are read, the DB through
its normal read transactions (WAL snapshots), and a folder that vanished (a rerun) is skipped
with a note. Limits keep the page small: JSONL files are read up to ``MAX_ROWS`` rows, JSON
documents up to ``MAX_JSON_BYTES``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

from runner.status import run_state
from state.store import loads

MAX_ROWS = 5000
MAX_JSON_BYTES = 5_000_000
MAX_PNG_BYTES = 3_000_000
SAMPLE = 3
LENGTH_FIELD = re.compile(r"(tokens|_len|length|words)$")
KEPT_FIELDS = ("kept", "is_kept", "keep", "accepted")
ORDER_FIELDS = ("order", "label_order", "swapped", "swap")
PROVENANCE_KEYS = ("git_sha", "model_id", "model_revision", "base_model_id", "base_model_revision", "model",
                   "profile", "backend", "device", "dtype", "quantization", "seed", "bootstrap_seed", "loader_version",
                   "transformers", "torch")


def _read_json(path: Path) -> Optional[Any]:
    if path.stat().st_size > MAX_JSON_BYTES:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None


def _read_jsonl(path: Path) -> list[dict]:
    rows: list[dict] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if len(rows) >= MAX_ROWS:
                break
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue  # a torn last line cannot happen in a committed folder; be lenient anyway
            if isinstance(obj, dict):
                rows.append(obj)
    return rows


def _kept_flag(row: dict) -> Optional[bool]:
    for k in KEPT_FIELDS:
        if isinstance(row.get(k), bool):
            return row[k]
    return None


def _num(v: Any) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def records_findings(rows: list[dict]) -> dict:
    """Length and margin distributions (split kept/rejected when known) and a sample."""
    lengths: dict[str, dict[str, list[float]]] = {}
    margins: dict[str, dict[str, list[float]]] = {}
    kept_rows, rejected_rows = [], []
    for r in rows:
        flag = _kept_flag(r)
        part = "all" if flag is None else ("kept" if flag else "rejected")
        if flag is True:
            kept_rows.append(r)
        elif flag is False:
            rejected_rows.append(r)
        for k, v in r.items():
            x = _num(v)
            if x is not None and LENGTH_FIELD.search(k):
                lengths.setdefault(k, {}).setdefault(part, []).append(x)
            if isinstance(v, dict) and _num(v.get("margin")) is not None:
                _margins(k, v, margins)
    return {"n": len(rows), "lengths": lengths, "margins": dict(sorted(margins.items())),
            "n_kept": len(kept_rows), "n_rejected": len(rejected_rows),
            "sample_kept": [_shorten(r) for r in kept_rows[:SAMPLE]],
            "sample_rejected": [_shorten(r) for r in rejected_rows[:SAMPLE]],
            "sample": [] if kept_rows or rejected_rows else [_shorten(r) for r in rows[:SAMPLE]]}


def _margins(field: str, v: dict, out: dict) -> None:
    """A critic verdict's margin, one series per label, one plot per critic field and label order:
    the combined verdict, and each nested per-order verdict (``ab``/``ba`` in phases/critic.py),
    or the order a flat verdict names in ``order``/``swapped``."""
    order = next((f"{o}={v[o]}" for o in ORDER_FIELDS if o in v and not isinstance(v[o], (dict, list))), "")
    name = f"{field}" + (f" ({order})" if order else "")
    out.setdefault(name, {}).setdefault(f"label {v.get('label', '?')}", []).append(float(v["margin"]))
    for sub, sv in v.items():
        if isinstance(sv, dict) and _num(sv.get("margin")) is not None:
            out.setdefault(f"{field}, order {sub}", {}).setdefault(f"label {sv.get('label', '?')}", []).append(
                float(sv["margin"]))


def _shorten(obj: Any, n: int = 300) -> Any:
    if isinstance(obj, str):
        return obj if len(obj) <= n else obj[: n - 1] + "…"
    if isinstance(obj, dict):
        return {k: _shorten(v, n) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_shorten(v, n) for v in obj[:10]]
    return obj


def _flat_scalars(obj: Any, prefix: str = "", depth: int = 3) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(obj, dict) and depth > 0:
        for k, v in obj.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, (str, int, float, bool)) or v is None:
                out[key] = v
            elif isinstance(v, dict) and not {"bins", "counts"} <= set(v):
                out.update(_flat_scalars(v, key, depth - 1))
    return out


def _qc_histograms(doc: dict) -> dict[str, dict]:
    """Precomputed margin histograms in a QC summary: {title: {"bins": [...], "counts": [...]}}."""
    out = {}
    for critic, acc in (doc.get("acceptance") or {}).items():
        if not isinstance(acc, dict):
            continue
        by_label = acc.get("margin_histogram_by_label") or {}
        for label, h in by_label.items():
            if isinstance(h, dict) and sum(h.get("counts") or []) > 0:
                out[f"{critic} critic, label {label}"] = h
        if not by_label and isinstance(acc.get("margin_histogram"), dict):
            out[f"{critic} critic"] = acc["margin_histogram"]
    return out


def _acceptance(doc: dict) -> dict[str, float]:
    """{critic: acceptance rate} from a QC summary's ``acceptance`` block (None rates left out)."""
    return {k: float(v["rate"]) for k, v in (doc.get("acceptance") or {}).items()
            if isinstance(v, dict) and _num(v.get("rate")) is not None}


def _provenance(doc: Any, found: dict, where: str, depth: int = 2) -> None:
    if not isinstance(doc, dict) or depth < 0:
        return
    for k, v in doc.items():
        if k in PROVENANCE_KEYS and isinstance(v, (str, int, float)) and not isinstance(v, bool):
            found.setdefault(k, {}).setdefault(str(v), where)
        elif isinstance(v, dict):
            _provenance(v, found, where, depth - 1)


def scan_output(root: Path, rel_root: str, provenance: dict) -> dict:
    """Everything shown for one committed step folder."""
    out: dict[str, Any] = {"files": [], "qc": [], "loss": [], "evals": [], "records": [], "pngs": [],
                           "tensorboard": None, "missing": None}
    if not root.is_dir():
        out["missing"] = f"{rel_root} is not on disk (rerun or deleted)"
        return out
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            continue
        if len(out["files"]) < 60:
            out["files"].append({"path": rel, "size": size})
        if rel.startswith("tensorboard/") and out["tensorboard"] is None:
            out["tensorboard"] = f"{rel_root}/tensorboard"
        try:
            if p.suffix == ".json":
                doc = _read_json(p)
                if not isinstance(doc, dict):
                    continue
                _provenance(doc, provenance, f"{rel_root}/{rel}")
                if isinstance(doc.get("acceptance"), dict) or ("counts" in doc and "rates" in doc):
                    out["qc"].append({"file": rel, "numbers": _flat_scalars(doc), "histograms": _qc_histograms(doc),
                                      "acceptance": _acceptance(doc)})
                if isinstance(doc.get("loss_curve"), dict):
                    out["loss"].append({"file": rel, "curve": doc["loss_curve"]})
                comp = doc.get("comparison")
                if isinstance(comp, dict) and isinstance(comp.get("per_type"), dict):
                    out["evals"].append({"file": rel, "doc": doc})
            elif p.suffix == ".jsonl" and "/ledger-" not in f"/{rel}":
                rows = _read_jsonl(p)
                if rows and all("step" in r and "loss" in r for r in rows[:5]):
                    out["loss"].append({"file": rel, "curve": {
                        "train": [{"step": r["step"], "loss": r["loss"]} for r in rows if _num(r.get("loss")) is not None],
                        "eval": [{"step": r["step"], "eval_loss": r["eval_loss"]} for r in rows
                                 if _num(r.get("eval_loss")) is not None]}})
                elif rows:
                    out["records"].append({"file": rel, **records_findings(rows)})
            elif p.suffix == ".png" and size <= MAX_PNG_BYTES:
                out["pngs"].append({"file": rel, "bytes": p.read_bytes()})
        except FileNotFoundError:
            out["missing"] = f"{rel_root}/{rel} vanished while reading (a rerun?)"
    return out


def collect(store: Any, run_id: str) -> dict:
    """The whole report's data. Reads the DB and committed artifacts; writes nothing."""
    st = run_state(store, run_id)
    run = store.get_run(run_id)
    plan = json.loads(run.plan_json or "[]")
    config = loads(run.config_json) or {}
    attempts = store.attempts(run_id)
    provenance: dict[str, dict[str, str]] = {}
    steps = []
    for s in st["steps"]:
        node = next((n for n in plan if n["name"] == s["name"]), {})
        entry = {"progress": None, **s, "description": node.get("description", ""), "gpu": bool(node.get("gpu")),
                 "findings": None, "cost": st["ledger"]["steps"].get(s["name"])}
        if s["status"] == "succeeded" and s["output_dir"]:
            entry["findings"] = scan_output(store.home / s["output_dir"], s["output_dir"], provenance)
        steps.append(entry)
    gates = []
    reviews = store.reviews(run_id)
    for node in plan:
        if node["kind"] != "gate":
            continue
        for g in store.gates(run_id, node["name"]):
            gates.append({"name": g.name, "policy": g.policy, "status": g.status, "wait_reason": g.wait_reason,
                          "requested_at": g.requested_at, "decided_by": g.decided_by, "note": g.note,
                          "check": loads(g.check_json), "criteria": node.get("criteria") or [],
                          "decisions": [{"source": d.source, "decision": d.decision, "who": d.who, "note": d.note,
                                         "at": d.created_at} for d in store.gate_decisions(g.id)],
                          "reviews": [{"model": r.model, "backend": r.backend, "decision": r.decision, "ok": r.ok,
                                       "error": r.error, "summary": (loads(r.verdict_json) or {}).get("summary"),
                                       "reasons": (loads(r.verdict_json) or {}).get("reasons") or [],
                                       "tokens_in": r.tokens_in, "tokens_out": r.tokens_out}
                                      for r in reviews if r.gate == g.name and r.gate_key == g.gate_key]})
    gates.sort(key=lambda g: g["requested_at"] or 0)
    timeline = [{"step": a.step, "number": a.number, "status": a.status, "start": a.started_at,
                 "end": a.ended_at, "invalidated": a.invalidated_at is not None} for a in attempts]
    return {"run": st["run"], "state": st["state"], "detail": st["detail"], "lease": st["lease"],
            "next_action": st["next_action"], "errors": st["errors"], "steps": steps, "gates": gates,
            "timeline": timeline, "ledger": st["ledger"], "config": config, "provenance": provenance,
            "plan": plan}
