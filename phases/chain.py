"""Chaining stages: the parent run's final adapter, merged, generates and trains this stage.

The pipeline ``phases.chain:pipeline`` (named by stages 2-6 through phases/stages/shared.yaml) is
cai-stage1's nodes with one step in front and a chained ``prepare_model``:

    parent_model -> prepare_model -> heldout -> pilot -> [qc_pilot] -> scale -> merge -> [qc_scale]
    -> sft -> evaluate -> regression -> [regression_gate] -> [sft_gate]

Launch: ``runner init --config phases/stages/stage2.yaml --from-run <stage-1 run>`` then
``runner resume --detach``. Spec: specs/stages.md ("Chaining").

- ``parent_model`` (params.parent = the runner's ``from_run`` view, reduced to what is used):
  with no parent it records ``{"parent": null}`` and the stage starts from
  ``params.prepare_model.model``. With a parent it checks that the parent's ``sft`` and
  ``prepare_model`` outputs still hash to what the parent recorded, loads the parent's base
  through the canonical loader, attaches the adapter (the evaluate step's checks), folds it in
  with PEFT ``merge_and_unload`` and saves ``merged/`` (safetensors + tokenizer, chat template
  removed) with ``merged/cai_model.json`` (the loader's marker: file hashes, the profile it
  descends from, so eos and control tokens stay right) and ``merged/provenance.json``.
  ``parent.json`` holds the **lineage**: the parent's lineage plus one link
  ``{run_id, stage, adapter_sha256, sft_output_hash, base_model, merged_sha256}``.
- ``regression`` / ``regression_gate`` (phases/regression.py): every earlier stage's held-out
  set (each lineage link records its ``heldout`` output) and IFEval re-tested; NO-GO on a
  significant regression, the set named.
- ``prepare_model`` (same params and outputs as stage 1's) loads ``merged/`` instead of
  ``params.prepare_model.model`` when there is a parent, and adds ``lineage`` to ``model.json``;
  every data manifest copies it from there (`phases.steps.common.session_manifest`).

The parent's output hashes are step params, recomputed from the state store on every resume
(`runner.lineage.parent_view`), so a parent re-run that changed its adapter changes this run's
``parent_model`` key and everything after it re-runs; an edited file under the parent's
artifacts is refused with the path named.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from phases import evaluate as ev
from phases.models import embedded
from phases.models.loader import load_model
from phases.regression import make_regression_step, regression_gate
from phases.sft import model_ref
from phases.steps import common
from phases.steps.config import expand_stage_config
from phases.steps.data import DATA_NODES
from phases.steps.model import prepare_model as base_prepare_model
from phases.steps.preferences import PREFERENCE_NODES
from phases.steps.train_eval import TRAIN_EVAL_NODES
from runner import Pipeline, step
from runner.errors import ConfigError, DataError
from state.files import atomic_write_json, hash_tree, sha256_file, tree_digest

__all__ = ["parent_model", "prepare_model", "pipeline", "expand_chain_config", "reduce_parent"]

USED_OUTPUTS = ("prepare_model", "sft", "parent_model", "heldout")


def reduce_parent(view: dict | None) -> dict:
    """The part of the runner's ``from_run`` view this pipeline uses (JSON, part of the cache key)."""
    if not view:
        return {}
    outs = view.get("outputs") or {}
    missing = [s for s in ("prepare_model", "sft") if s not in outs]
    if missing:
        raise ConfigError(f"--from-run {view.get('run_id')}: that run has no finished {', '.join(missing)} step "
                          f"(finished: {', '.join(outs) or 'none'}); a stage chains from a run whose SFT finished. "
                          f"Resume it first: runner resume --run {view.get('run_id')}")
    st = view.get("stage") if isinstance(view.get("stage"), dict) else {}
    return {"run_id": view["run_id"], "stage": st.get("name"),
            "outputs": {k: {"dir": outs[k]["dir"], "hash": outs[k]["hash"]} for k in USED_OUTPUTS if k in outs}}


def expand_chain_config(raw: dict, path: Any, extra_keys: frozenset = frozenset()) -> dict:
    """``expand_config`` hook: stage-1 expansion plus ``params.parent_model`` from ``from_run``."""
    if isinstance(raw.get("params"), dict) and "parent_model" in raw["params"]:
        raise ConfigError(f"{path}: params.parent_model is set from `runner init --from-run RUN` or `from:`; remove it")
    out = expand_stage_config(raw, path, extra_keys)
    out["params"]["parent_model"] = {"parent": reduce_parent(raw.get("from_run"))}
    return out


def _verify_output(name: str, o: dict) -> Path:
    d = Path(o["dir"])
    if not d.is_dir():
        raise DataError(f"parent output {name} at {d} is gone; restore it or re-run the parent stage")
    got = tree_digest(hash_tree(d))
    if got != o["hash"]:
        raise DataError(f"parent output {name} at {d} hashes to {got[:12]}, not the {o['hash'][:12]} its run recorded; "
                        "it was edited after the parent finished. Re-run the parent's step (runner rerun) or restore it")
    return d


def merge_adapter(base_ref: str, adapter: Path, dest: Path, device: str = "cpu") -> dict:
    """Base + LoRA adapter -> a plain model folder ``dest`` (PEFT ``merge_and_unload``, 16/32-bit).

    The base is loaded through the canonical loader (never quantized: merging into 4-bit
    weights is lossy); dtype is the loader's default for ``device`` (fp32 CPU, bf16 CUDA).
    Returns the marker written to ``dest/cai_model.json``.
    """
    loaded = load_model(base_ref, device=device, backend="hf", run_sentinels=False)
    ev.attach_adapter(loaded, adapter)
    merged = loaded.model.merge_and_unload()
    dest.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(dest), safe_serialization=True)
    loaded.tokenizer.chat_template = None
    loaded.tokenizer.save_pretrained(str(dest))
    for f in dest.glob("chat_template*"):
        f.unlink()
    cfg_path = dest / "tokenizer_config.json"
    if cfg_path.is_file():  # the base's template must not come back with the saved tokenizer
        tc = json.loads(cfg_path.read_text(encoding="utf-8"))
        if tc.pop("chat_template", None) is not None:
            atomic_write_json(cfg_path, tc, indent=2)
    parent_marker = embedded.read_marker(loaded.path) or {}
    marker = {"format": parent_marker.get("format", 1), "kind": "merged",
              "profile": loaded.profile.id if loaded.profile else None,
              "files": {p.name: sha256_file(p) for p in sorted(dest.iterdir()) if p.is_file() and p.name != embedded.MARKER},
              "merged_from": {"base": str(base_ref), "base_model_id": loaded.model_id, "adapter": str(adapter),
                              "method": "peft merge_and_unload", "dtype": str(loaded.dtype)}}
    if marker["profile"] is None:
        marker.pop("profile")
    atomic_write_json(dest / embedded.MARKER, marker, indent=1)
    return marker


@step(outputs=["parent.json"], version="1", params={"parent": {}, "device": "auto"})
def parent_model(ctx):
    """Merge the parent run's final adapter into its base (a new folder with provenance), or record no parent."""
    parent = ctx.params["parent"]
    if not parent:
        common.dump(ctx.out_dir / "parent.json", {"parent": None, "lineage": []})
        ctx.log("no parent run: this stage starts from params.prepare_model.model")
        return {"parent": None}
    outs = parent["outputs"]
    sft_dir = _verify_output("sft", outs["sft"])
    pm_dir = _verify_output("prepare_model", outs["prepare_model"])
    prior: list = []
    if "parent_model" in outs:
        prior = common.load_json(_verify_output("parent_model", outs["parent_model"]) / "parent.json").get("lineage") or []

    base_ref = model_ref(pm_dir / "model.json")
    success = common.load_json(sft_dir / "TRAINING_SUCCESS")
    adapter = sft_dir / success.get("adapter_path", "adapter")
    import torch

    dev = ctx.params["device"] if ctx.params["device"] != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    ctx.log(f"merging run {parent['run_id']}'s adapter into {base_ref} on {dev}")
    marker = merge_adapter(base_ref, adapter, ctx.out_dir / "merged", dev)
    merged_sha = tree_digest(hash_tree(ctx.out_dir / "merged"))
    if "heldout" in outs:  # the parent's held-out set, re-tested for regression at every later stage
        _verify_output("heldout", outs["heldout"])
    link = {"run_id": parent["run_id"], "stage": parent.get("stage"), "sft_output_hash": outs["sft"]["hash"],
            "heldout": outs.get("heldout"),
            "adapter_sha256": success.get("adapter_sha256"), "base_model": str(base_ref),
            "base_model_json_sha256": sha256_file(pm_dir / "model.json"), "merged_sha256": merged_sha}
    atomic_write_json(ctx.out_dir / "merged" / "provenance.json",
                      {"schema": "merged_model/v1", "link": link, "lineage": prior + [link], "marker": marker,
                       "git_sha": common.git_info()["commit"]}, indent=2)
    common.dump(ctx.out_dir / "parent.json", {"parent": parent, "lineage": prior + [link]})
    return {"parent": parent["run_id"], "stage": parent.get("stage"), "merged_sha256": merged_sha[:12],
            "depth": len(prior) + 1}


class _Params:
    """A step context whose ``params`` differ (the chained model ref); everything else delegates."""

    def __init__(self, ctx, params: dict):
        self._ctx, self.params = ctx, params

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


@step(name="prepare_model", inputs=["parent_model"], outputs=["model.json"], version="1",
      params=dict(base_prepare_model.__step__.params))
def prepare_model(ctx):
    """Stage 1's prepare_model on the parent's merged model (or the configured one), with the lineage."""
    pdir = ctx.input("parent_model")
    info = common.load_json(pdir / "parent.json")
    params = dict(ctx.params)
    if info["parent"]:
        params["model"] = str(pdir / "merged")
        if params.get("quantization"):
            ctx.log("the parent's merged model is loaded with the configured quantization "
                    f"{params['quantization']!r}", kind="chain_note")
    out = base_prepare_model.__step__.fn(_Params(ctx, params))
    mj = ctx.out_dir / "model.json"
    data = common.load_json(mj)
    data["lineage"] = info["lineage"]
    common.dump(mj, data)
    return {**out, "lineage": [f"{x['run_id']}({x.get('stage')})" for x in info["lineage"]]}


def _regression_nodes(adapter_step: str) -> list:
    return [make_regression_step(adapter_step), regression_gate]


_sft, _evaluate, _sft_gate = TRAIN_EVAL_NODES
pipeline = Pipeline(
    "cai-chained-stage", [parent_model, prepare_model, *[n for n in DATA_NODES if getattr(n, "__step__", n).name
                                                           != "prepare_model"],
                          _sft, _evaluate, *_regression_nodes("sft"), _sft_gate, *PREFERENCE_NODES],
    expand_config=expand_chain_config,
    goal="A later stage of constitutional bootstrapping: the previous stage's model (its adapter merged into its "
         "base) generates and judges this stage's data (held-out set first, pilot, QC gate, scale, merge), then SFT "
         "on top of it and a paired evaluation against it (earlier stages' held-out sets re-tested); then, as in "
         "stage 1, preference pairs from the new SFT model, pair QC, DPO and a paired SFT-vs-DPO evaluation.")

