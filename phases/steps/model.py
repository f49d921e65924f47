"""Step `prepare_model` and the model handles of later steps.

Runs inside the pipeline, first: ``runner run --config phases/stages/demo.yaml``.

- `prepare_model` (a step): loads the model once through the canonical loader
  (`phases.models.loader.load_model`, which runs the contamination guard and sentinels) and
  writes ``model.json`` = ``{"request": {model, device, dtype, quantization, backend},
  "provenance": <loader provenance incl. sentinel results>, "fingerprint", "sentinels_passed"}``.
- `open_model(ctx)`: later steps load the same model once per step with the same request,
  skipping the sentinel generations (already recorded by prepare_model for the same files),
  and refuse to go on if the model's identity differs from model.json's.
- `record_meta(info)`: the model provenance every SFT record carries.
The loader imports torch only when a model is loaded, so importing this module stays light.
"""
from __future__ import annotations

from typing import Any

from phases.models.embedded import ModelNotPreparedError
from phases.models.loader import fingerprint, load_model
from phases.steps.common import dump, load_json
from runner import step
from runner.errors import DataError

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"


def _request(p: Any) -> dict:
    req = {"model": p["model"], "device": p["device"], "dtype": p["dtype"] or None,
           "quantization": p["quantization"] or None, "backend": p["backend"]}
    if p.get("kind"):
        req["kind"] = p["kind"]  # only when declared: older model.json records have no kind
    return req


# kind: "" (the profile says; an unknown folder is "unknown" and its sentinel failures only warn)
# or "base" (a pod's local base-model folder: a sentinel failure aborts prepare_model) / "instruct".
@step(outputs=["model.json"], version="1", gpu=True,
      params={"model": DEFAULT_MODEL, "device": "auto", "dtype": "", "quantization": "", "backend": "auto",
              "kind": ""})
def prepare_model(ctx):
    """Load the model through the canonical loader and record its provenance and sentinels."""
    req = _request(ctx.params)
    try:
        m = load_model(req["model"], device=req["device"], dtype=req["dtype"], quantization=req["quantization"],
                       backend=req["backend"], kind=req.get("kind"))
    except (FileNotFoundError, ModelNotPreparedError) as e:
        raise DataError(f"{e} (the model is params.prepare_model.model in the run config)") from e
    prov = m.provenance
    sentinels = prov.get("sentinels") or {}
    passed = bool(sentinels.get("all_passed")) if not sentinels.get("skipped") else None
    dump(ctx.out_dir / "model.json", {"request": req, "provenance": prov, "fingerprint": fingerprint(prov),
                                      "sentinels_passed": passed})
    ctx.log(f"model {m.model_id} ({m.kind}) on {m.device}/{m.dtype} via {prov['backend']}; sentinels passed: {passed}")
    return {"model": m.model_id, "kind": m.kind, "device": m.device, "backend": prov["backend"],
            "sentinels_passed": passed, "stand_in_note": m.stand_in_note}


MODEL_IDENTITY = ("model_id", "model_revision", "file_hashes", "quantization", "dtype", "device", "backend",
                  "template_disabled", "add_special_tokens", "eos_token", "stop_tokens")


def model_info(ctx) -> dict:
    return load_json(ctx.input("prepare_model") / "model.json")


def open_model(ctx, batch_size: int):
    """Load the recorded model once for this step (no sentinel re-run; fingerprint checked)."""
    info = model_info(ctx)
    req = info["request"]
    m = load_model(req["model"], device=req["device"], dtype=req["dtype"], quantization=req["quantization"],
                   backend=req["backend"], batch_size=batch_size, run_sentinels=False, kind=req.get("kind"))
    # The model's identity, not the loader fingerprint: that includes the checkout's git SHA,
    # which moves with every commit to the repo while a run is in progress.
    old, new = info["provenance"], m.provenance
    changed = [k for k in MODEL_IDENTITY if old.get(k) != new.get(k)]
    if changed:
        raise DataError(f"the model loaded by step {ctx.step} is not the one prepare_model recorded "
                        f"(changed: {', '.join(changed)}). Run `runner rerun prepare_model`.")
    if old.get("loader_version") != new.get("loader_version"):
        ctx.log(f"loader version moved from {old.get('loader_version')} to {new.get('loader_version')} "
                "since prepare_model; same model files and settings")
    return m, info


def record_meta(info: dict, gen_params: dict | None = None) -> dict:
    """METHOD.md SFT-record metadata (no wall-clock time: see the module docstring)."""
    prov = info["provenance"]
    out = {"git_sha": prov.get("loader_version"), "loader_version": prov.get("loader_version"),
           "model": prov.get("model_id"), "model_revision": prov.get("model_revision"),
           "quantization": prov.get("quantization"), "template_disabled": prov.get("template_disabled"),
           "add_special_tokens": prov.get("add_special_tokens")}
    if gen_params is not None:
        out["generation_params"] = gen_params
    return out
