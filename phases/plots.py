"""PNG plots for SFT and evaluation: the training loss curve and per-type success with CIs per arm.

Not runnable; called by the `sft` and `evaluate` steps. matplotlib (Agg backend) is imported
inside the functions, so importing this module is cheap. Files are written atomically.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["plot_loss", "plot_per_type"]


def _save(fig, path: Path) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        # metadata without a creation date: the same numbers give the same bytes
        fig.savefig(tmp, dpi=110, bbox_inches="tight", metadata={"Software": None})
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def plot_loss(loss_curve: dict, path: Path, title: str = "SFT loss") -> None:
    """``loss_curve`` = {"train": [{"step", "loss"}], "eval": [{"step", "eval_loss"}]} -> PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    tr = loss_curve.get("train") or []
    ev = loss_curve.get("eval") or []
    if tr:
        ax.plot([p["step"] for p in tr], [p["loss"] for p in tr], marker="o", ms=3, label="train loss")
    if ev:
        ax.plot([p["step"] for p in ev], [p["eval_loss"] for p in ev], marker="s", ms=4, label="dev loss")
    if not tr and not ev:
        ax.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (response tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if tr or ev:
        ax.legend()
    _save(fig, path)
    plt.close(fig)


def plot_per_type(per_type: dict, arms: list[str], path: Path, title: str = "Success per type") -> None:
    """``per_type`` = {type: {arm: {"rate", "wilson_ci": [lo, hi], "n"}}} -> grouped bars with CI whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = sorted(per_type)
    width = 0.8 / max(1, len(arms))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(types) + 2), 4))
    for k, arm in enumerate(arms):
        xs, ys, lo, hi = [], [], [], []
        for i, t in enumerate(types):
            blk = per_type[t].get(arm)
            if blk is None:
                continue
            xs.append(i + (k - (len(arms) - 1) / 2) * width)
            ys.append(blk["rate"])
            lo.append(blk["rate"] - blk["wilson_ci"][0])
            hi.append(blk["wilson_ci"][1] - blk["rate"])
        ax.bar(xs, ys, width=width, yerr=[lo, hi], capsize=2, label=arm)
    ax.set_xticks(range(len(types)))
    ax.set_xticklabels([f"{t}\n(n={next(iter(per_type[t].values()))['n']})" for t in types], rotation=30,
                       ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (95% Wilson CI)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
    plt.close(fig)
