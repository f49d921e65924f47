"""Compiled decoder layers (``params.sft.compile: layers``) against the eager step, on a GPU.

For a random Qwen2 of ``--size`` wrapped in the step's LoRA (r=16 on every linear layer, LoRA B
drawn non-zero so the adapters matter), in fp32 and bf16, on two batch shapes (right-padded rows
of different lengths, no attention mask: what the fast trainer feeds), the step's loss
(``phases.sft_fast_trainer.fast_loss``: the decoder, then the fused linear + CE, whose chunk math
is compiled too on the compiled side, as the step runs it with ``COMPILE_LOSS``; in bf16 the
decoder under bf16 autocast when ``AUTOCAST_DECODER`` is on, as the step trains; rows say
``autocast``):
- loss and LoRA gradients of the compiled layers vs the eager ones (relative difference);
- causality: changing row 0's tokens from position ``k`` on must leave its hidden states before
  ``k`` unchanged (a lost causal mask would let training see the tokens it predicts);
- then ``--steps`` optimizer steps (AdamW, lr 2e-4) from the same start, eager and compiled: the
  loss curves side by side.
Prints one JSON row per check; exit 1 if a check fails its tolerance.

Run (GPU):  python3 benchmarks/check_sft_compile.py --size 0.5B --out $OUT/compile_check
CPU smoke:  .venv/bin/python benchmarks/check_sft_compile.py --size tiny --device cpu --dtypes float32
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import common  # noqa: E402

#: relative tolerances (|a - b| / |a|) per dtype for the loss; the LoRA gradients' norm of difference gets
#: 3x that (``grad_tolerance`` in the rows), the last loss of the AdamW curve 10x
TOL = {"float32": 2e-4, "bfloat16": 3e-2}


def _model(size: str, dev: str, dtype: torch.dtype):
    from peft import get_peft_model

    from phases import sft

    m = common.build_model(size, dev).to(dtype)
    p = {**sft.SFT_DEFAULTS, "lora_dropout": 0.0}
    m = get_peft_model(m, sft._lora_config(p))
    g = torch.Generator().manual_seed(1)
    for n, w in m.named_parameters():
        if "lora_B" in n:
            w.data.copy_((torch.randn(w.shape, generator=g) * 0.02).to(w.dtype))
    return m.train()


def _batch(vocab: int, lens: list[int], dev: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    width = max(lens)
    ids = torch.zeros(len(lens), width, dtype=torch.long)
    labels = torch.full((len(lens), width), -100, dtype=torch.long)
    for i, n in enumerate(lens):
        row = torch.randint(16, vocab, (n,), generator=g)
        ids[i, :n], labels[i, n // 4:n] = row, row[n // 4:]
    return ids.to(dev), labels.to(dev)


def _autocast(dtype_name: str):
    """The ``autocast_dtype`` the step's fast trainer passes for a LoRA of this dtype on CUDA (bf16:
    ``decoder_autocast_record``'s rule for an unquantized model; fp32: none)."""
    from phases.sft_fast_trainer import decoder_autocast_record

    return torch.bfloat16 if dtype_name == "bfloat16" and decoder_autocast_record("cuda", None)["applied"] else None


def _loss_grads(model, ids, labels, compiled: bool, autocast_dtype=None):
    from phases.sft_fast_trainer import fast_loss

    model.zero_grad(set_to_none=True)
    loss = fast_loss(model, ids, labels, compiled=compiled, autocast_dtype=autocast_dtype)
    loss.backward()
    grads = {n: w.grad.detach().float().clone() for n, w in model.named_parameters() if w.requires_grad}
    return float(loss), grads


def _hidden(model, ids):
    with torch.no_grad():
        return model.get_base_model().get_decoder()(input_ids=ids, use_cache=False).last_hidden_state.float()


def check(size: str, dev: str, dtype_name: str, steps: int) -> list[dict]:
    from phases.sft_speed import CompileChoice, compile_layers

    dtype = getattr(torch, dtype_name)
    torch._dynamo.reset()
    eager = _model(size, dev, dtype)
    comp = copy.deepcopy(eager)
    compile_layers(comp, CompileChoice("layers", True))
    vocab = eager.config.vocab_size
    rows, tol, ac = [], TOL[dtype_name], _autocast(dtype_name)
    grad_tol, curve_tol = 3 * tol, 10 * tol  # see TOL
    for shape, lens in enumerate(([96, 64, 33, 17], [160, 120, 80, 40, 20, 9])):
        ids, labels = _batch(vocab, lens, dev, seed=shape)
        le, ge = _loss_grads(eager, ids, labels, False, ac)
        lc, gc = _loss_grads(comp, ids, labels, True, ac)
        num = sum(float((ge[n] - gc[n]).norm()) ** 2 for n in ge) ** 0.5
        den = sum(float(ge[n].norm()) ** 2 for n in ge) ** 0.5
        loss_rel, grad_rel = abs(le - lc) / abs(le), num / den
        rows.append({"check": "loss and LoRA gradients, compiled vs eager", "dtype": dtype_name, "autocast": ac is not None,
                     "shape": lens,
                     "loss_eager": le, "loss_compiled": lc, "loss_rel_diff": loss_rel, "grad_rel_diff": grad_rel,
                     "tolerance": tol, "grad_tolerance": grad_tol, "ok": loss_rel <= tol and grad_rel <= grad_tol})
    k = 40
    ids, _ = _batch(vocab, [96, 64], dev, seed=5)
    alt = ids.clone()
    alt[0, k:96] = torch.randint(16, vocab, (96 - k,), generator=torch.Generator().manual_seed(9)).to(dev)
    for name, m in (("eager", eager), ("compiled", comp)):
        d = float((_hidden(m, ids)[0, :k] - _hidden(m, alt)[0, :k]).abs().max())
        ref = float(_hidden(m, ids)[0, :k].abs().max())
        rows.append({"check": f"causality ({name}): row 0's hidden states before position {k} when tokens from {k} on "
                     "change", "dtype": dtype_name, "max_abs_diff": d, "max_abs_hidden": ref,
                     "ok": d <= tol * ref})
    curves = {}
    for name, m in (("eager", eager), ("compiled", comp)):
        torch.manual_seed(0)
        params = [w for w in m.parameters() if w.requires_grad]
        opt = torch.optim.AdamW(params, lr=2e-4)
        curve = []
        for s in range(steps):
            ids, labels = _batch(vocab, [128 - 8 * (s % 5), 100, 77, 50, 31], dev, seed=100 + s)
            from phases.sft_fast_trainer import fast_loss

            loss = fast_loss(m, ids, labels, compiled=m is comp, autocast_dtype=ac)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            curve.append(round(float(loss), 5))
        curves[name] = curve
    last_rel = abs(curves["eager"][-1] - curves["compiled"][-1]) / abs(curves["eager"][-1])
    rows.append({"check": f"loss curve over {steps} AdamW steps (lr 2e-4), same start and batches", "dtype": dtype_name,
                 "autocast": ac is not None,
                 "eager": curves["eager"], "compiled": curves["compiled"], "last_rel_diff": last_rel,
                 "tolerance": curve_tol, "ok": last_rel <= curve_tol})
    del eager, comp
    common.free(dev)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="0.5B")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--out", default="/tmp/check-sft-compile")
    a = ap.parse_args(argv)
    rows = []
    for dt in a.dtypes.split(","):
        rows += check(a.size, a.device, dt, a.steps)
        for r in rows:
            if r.get("dtype") == dt:
                print(json.dumps(r), flush=True)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "compile_check.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    bad = [r["check"] + " " + r["dtype"] for r in rows if not r["ok"]]
    print("compile check: " + ("all ok" if not bad else f"FAILED: {bad}"), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
