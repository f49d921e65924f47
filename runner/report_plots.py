"""The report's plots (matplotlib, Agg backend), each returned as PNG bytes for a data URI.

Imported only by `runner report` (never on the `runner status` path). Every function takes plain
data from runner/report_data.py and returns ``bytes``; none reads files.
"""
from __future__ import annotations

import io
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STATUS_COLOR = {"succeeded": "#2e7d32", "running": "#1565c0", "failed": "#c62828", "interrupted": "#ef6c00",
                "dead_lettered": "#6a1b9a"}


def _png(fig) -> bytes:  # noqa: ANN001
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def timeline(attempts: list[dict], gates: list[dict], now: float) -> Optional[bytes]:
    """One bar per attempt (start to end, colour = status) on the step's row; gate decisions as marks."""
    if not attempts:
        return None
    t0 = min(a["start"] for a in attempts)
    rows = list(dict.fromkeys(a["step"] for a in attempts))
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.4))
    for a in attempts:
        end = a["end"] or now
        ax.barh(rows.index(a["step"]), max(end - a["start"], 0.05), left=a["start"] - t0,
                color=STATUS_COLOR.get(a["status"], "#999"), alpha=0.4 if a["invalidated"] else 0.9)
    for g in gates:
        for d in g["decisions"]:
            ax.axvline(d["at"] - t0, color="#555", ls=":", lw=1)
            ax.text(d["at"] - t0, len(rows) - 0.4, f"{g['name']}: {d['decision']}", rotation=90, fontsize=7,
                    va="top", ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first attempt started")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in STATUS_COLOR.values()]
    ax.legend(handles, list(STATUS_COLOR), fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _png(fig)


def histogram(series: dict[str, list[float]], title: str, xlabel: str) -> bytes:
    """Overlaid histograms, one per named series (e.g. kept / rejected)."""
    fig, ax = plt.subplots(figsize=(4.6, 2.8))
    vals = [v for s in series.values() for v in s]
    bins = min(30, max(5, len(set(vals))))
    for name, s in series.items():
        ax.hist(s, bins=bins, range=(min(vals), max(vals) if max(vals) > min(vals) else min(vals) + 1),
                alpha=0.6, label=f"{name} (n={len(s)})")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.legend(fontsize=7)
    return _png(fig)


def binned(hist: dict, title: str) -> bytes:
    """A precomputed histogram ``{"bins": [labels], "counts": [ints]}`` as bars."""
    fig, ax = plt.subplots(figsize=(4.6, 2.8))
    ax.bar(range(len(hist["counts"])), hist["counts"], color="#5c6bc0")
    ax.set_xticks(range(len(hist["bins"])), hist["bins"], rotation=45, fontsize=7, ha="right")
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("records", fontsize=8)
    return _png(fig)


def bars(values: dict[str, float], title: str, ylabel: str) -> bytes:
    fig, ax = plt.subplots(figsize=(4.6, 2.8))
    ax.bar(list(values), list(values.values()), color="#26a69a")
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    return _png(fig)


def loss(curve: dict, title: str) -> Optional[bytes]:
    train = curve.get("train") or []
    dev = curve.get("eval") or []
    if not train and not dev:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], marker=".", label="train")
    if dev:
        ax.plot([r["step"] for r in dev], [r["eval_loss"] for r in dev], marker="o", label="dev")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.legend()
    return _png(fig)


def forest(per_type: dict, title: str) -> Optional[bytes]:
    """Per-type lift (B - A) with its CI; significant types (after FDR) drawn filled."""
    rows = [(t, b) for t, b in per_type.items() if isinstance(b, dict) and b.get("lift") is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 0.4 * len(rows) + 1.3))
    for i, (t, b) in enumerate(rows):
        lo, hi = (b.get("lift_ci") or [b["lift"], b["lift"]])[:2]
        ax.plot([lo, hi], [i, i], color="#37474f")
        ax.plot([b["lift"]], [i], marker="o", color="#c62828" if b.get("significant") else "#37474f",
                fillstyle="full" if b.get("significant") else "none")
    ax.axvline(0, color="#999", lw=1)
    ax.set_yticks(range(len(rows)), [f"{t} (n={b.get('n', '?')})" for t, b in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("lift in success rate (trained - baseline), with CI")
    ax.set_title(title, fontsize=9)
    return _png(fig)


def arms(arms_: dict) -> Optional[bytes]:
    """Success rate with Wilson CI, truncation rate and mean tokens per arm, side by side."""
    names = [a for a, b in arms_.items() if isinstance(b, dict) and "rate" in b]
    if not names:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(9, 2.8))
    rates = [arms_[a]["rate"] for a in names]
    ci = [arms_[a].get("wilson_ci") or [r, r] for a, r in zip(names, rates)]
    axes[0].bar(names, rates, yerr=[[r - c[0] for r, c in zip(rates, ci)], [c[1] - r for r, c in zip(rates, ci)]],
                color="#43a047", capsize=3)
    axes[0].set_title("strict success (Wilson CI)", fontsize=9)
    axes[1].bar(names, [arms_[a].get("truncation_rate", 0) for a in names], color="#fb8c00")
    axes[1].set_title("truncation rate", fontsize=9)
    axes[2].bar(names, [arms_[a].get("mean_tokens", 0) for a in names], color="#1e88e5")
    axes[2].set_title("mean response tokens", fontsize=9)
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8, rotation=30)
    return _png(fig)


def costs(steps: dict) -> Optional[bytes]:
    items = [(s, c["usd"]) for s, c in steps.items() if c.get("usd")]
    if not items:
        return None
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(items) + 1.2))
    ax.barh([s for s, _ in items], [u for _, u in items], color="#8d6e63")
    ax.invert_yaxis()
    ax.set_xlabel("USD")
    return _png(fig)
