"""`runner report [RUN] [--out DIR]`: one self-contained static HTML page about a run.

    runner report                         # newest run -> artifacts/<run>/report/report.html
    runner report stage1-tiny --out /tmp/r

Inline CSS, every image a ``data:`` URI, no script and no network: the file opens from disk and
can be mailed. Sections: summary, timeline of steps and gates, per-step findings (QC numbers
and histograms, critic margins, lengths, kept/rejected samples), training curves, evaluation
(forest plot, arms side by side), gate history with reviewer verdicts and human notes, the cost
ledger, provenance. What appears is discovered from the data (runner/report_data.py), so new
steps are picked up without code changes. Reads only the state DB and committed artifacts: safe
on a run in progress and while a runner writes. Needs ``jinja2`` and ``matplotlib`` (the
``report`` extra); `runner status` never imports this module's dependencies.
"""
from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Any

from runner.errors import EXIT_DONE, RunnerError
from runner.home import open_store, resolve_run
from runner.report_data import collect
from state.files import atomic_write_bytes

TEMPLATE = "report.html.j2"


def _uri(png: bytes | None) -> str | None:
    return None if png is None else "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""


def _dur(a: float | None, b: float | None) -> str:
    if not a:
        return ""
    s = (b or time.time()) - a
    return f"{s:.1f}s" if s < 120 else f"{s / 60:.1f}m" if s < 7200 else f"{s / 3600:.2f}h"


def render(data: dict) -> str:
    """The HTML page for ``collect()``'s data (plots are drawn here)."""
    import jinja2

    from runner import report_plots as P  # lazy: matplotlib, only when a report has plots to draw

    now = time.time()
    plots: dict[str, Any] = {"timeline": _uri(P.timeline(data["timeline"], data["gates"], now)),
                             "costs": _uri(P.costs(data["ledger"]["steps"]))}
    training, evaluation = [], []
    for s in data["steps"]:
        f = s.get("findings")
        if not f:
            continue
        f["plots"] = []
        for q in f["qc"]:
            q["plots"] = [_uri(P.bars(q["acceptance"], f"{q['file']}: acceptance rate", "rate"))] if q["acceptance"] else []
            q["plots"] += [_uri(P.binned(h, f"margins: {t}")) for t, h in q["histograms"].items()]
        for r in f["records"]:
            r["plots"] = []
            for field, parts in r["lengths"].items():
                r["plots"].append(_uri(P.histogram(parts, f"{r['file']}: {field}", field)))
            for name, by_label in r["margins"].items():
                r["plots"].append(_uri(P.histogram(by_label, f"{r['file']}: {name} margin", "margin")))
        for lc in f["loss"]:
            uri = _uri(P.loss(lc["curve"], f"{s['name']}: {lc['file']}"))
            if uri:
                training.append({"step": s["name"], "file": lc["file"], "plot": uri,
                                 "tensorboard": f["tensorboard"], "points": len(lc["curve"].get("train") or [])})
        for ev in f["evals"]:
            doc = ev["doc"]
            comp, by_c = doc.get("comparison") or {}, doc.get("comparison_by_constraint") or {}
            evaluation.append({
                "step": s["name"], "file": ev["file"],
                "forest": _uri(P.forest(comp.get("per_type") or {}, "per family: lift with CI")),
                "forest_constraint": _uri(P.forest(by_c.get("per_type") or {}, "per constraint type: lift with CI")),
                "arms_plot": _uri(P.arms(doc.get("arms") or {})), "arms": doc.get("arms") or {},
                "overall": comp.get("overall") or {}, "baseline": (doc.get("baseline") or {}).get("arm"),
                "gate": doc.get("gate") or {}, "summary_text": doc.get("summary_text") or {}})
        f["images"] = [{"file": p["file"], "uri": _uri(p["bytes"])} for p in f["pngs"]]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).with_name("templates"))),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined)
    env.filters["when"] = _when
    env.filters["j"] = lambda o: json.dumps(o, sort_keys=True, default=str, ensure_ascii=False, indent=1)
    env.filters["num"] = lambda v: (f"{v:.4g}" if isinstance(v, float) else str(v))
    env.filters["ci"] = lambda v: ("[" + ", ".join(f"{x:.3g}" for x in v) + "]" if isinstance(v, (list, tuple))
                                   and all(isinstance(x, (int, float)) for x in v) else str(v))
    return env.get_template(TEMPLATE).render(d=data, plots=plots, training=training, evaluation=evaluation,
                                            dur=_dur, generated=_when(now))


def write_report(store: Any, run_id: str, out_dir: Path | None = None) -> Path:
    """Collect, render and atomically write ``report.html``; returns its path."""
    html = render(collect(store, run_id))
    out_dir = Path(out_dir) if out_dir else store.home / "artifacts" / run_id / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    atomic_write_bytes(path, html.encode("utf-8"))
    return path


def cmd_report(args) -> int:  # noqa: ANN001
    try:
        import jinja2  # noqa: F401
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise RunnerError(f"runner report needs jinja2 and matplotlib ({e}); install them with "
                          "`pip install -e '.[report]'`") from e
    store = open_store(args)
    if args.run_pos:
        args.run = args.run_pos
    run_id = resolve_run(store, args)
    path = write_report(store, run_id, Path(args.out) if args.out else None)
    print(f"report for run {run_id}: {path} ({os.path.getsize(path) // 1024} KiB, self-contained; open it in a browser)")
    return EXIT_DONE


def register(sub, add) -> None:  # noqa: ANN001
    sp = add("report", cmd_report, "Write a self-contained HTML report of a run (plots inline; safe while it runs).",
             "runner report --out /tmp/report && xdg-open /tmp/report/report.html")
    sp.add_argument("run_pos", nargs="?", metavar="RUN", help="run id (default: --run, $RUNNER_RUN or the newest run)")
    sp.add_argument("--out", help="folder for report.html (default: artifacts/<run>/report/)")
