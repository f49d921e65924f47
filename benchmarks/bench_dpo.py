"""DPO throughput: TRL's DPOTrainer with its default settings vs our DPO configuration, both LoRA r=16
(alpha 32, dropout 0) on every linear layer of a random-weight Qwen2 (bf16 on CUDA), on the same
random preference pairs (prompt 32-256 tokens, chosen/rejected 16-384 tokens each).

- TRL defaults: ``DPOTrainer(model, DPOConfig(output_dir, max_steps, report_to=[], save_strategy="no"),
  peft_config=LoraConfig(...))``; every training setting is TRL's default (batch 8, gradient
  checkpointing on, no precomputed reference: a reference forward with the adapter disabled in
  every step, bf16 on CUDA). The pairs are pre-tokenized (random ids), so TRL's text tokenization
  is bypassed by the same ``_prepare_dataset`` override our trainer uses; nothing else changes.
- Ours (phases/dpo.py): the reference log-probs precomputed once by ``sequence_logps`` (batched,
  no grad) and stored, then the same DPOTrainer with ``precompute_ref_log_probs`` fed from them,
  no gradient checkpointing (halved batch with doubled accumulation on out-of-memory), same batch
  of 8 pairs per optimizer step.
- Reported: trained tokens/s (prompt+chosen and prompt+rejected tokens, pads excluded) over the
  timed steps after warm-up, the reference pass's tokens/s, and for one epoch the throughput with
  the reference pass included (1 / (1/train + 1/ref)), so the one-off pass is not hidden.
  Target (issue 13): ours >= 1.5x TRL defaults.

Run alone:  python3 benchmarks/bench_dpo.py --sizes 1.5B,7B --out $OUT   (CUDA)
CPU smoke:  python3 benchmarks/bench_dpo.py --cpu --sizes tiny --out /tmp/bench-dpo
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import common  # noqa: E402


def make_pairs(n: int, vocab: int, p: tuple[int, int], c: tuple[int, int], seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)

    def rnd(lo, hi):
        return common.rand_ids(g, int(torch.randint(lo, hi + 1, (1,), generator=g)), vocab)

    return [{"prompt_ids": rnd(*p), "chosen_ids": rnd(*c), "rejected_ids": rnd(*c)} for _ in range(n)]


def _tokens(ex: dict) -> int:
    return 2 * len(ex["prompt_ids"]) + len(ex["chosen_ids"]) + len(ex["rejected_ids"])


def _tiny_tokenizer(tmp: str):
    from transformers import AutoTokenizer

    from phases.models.tiny import build_tiny_model

    d = build_tiny_model(Path(tmp) / "tok", hidden_size=16, num_layers=1)
    return AutoTokenizer.from_pretrained(d)


def _trainer(model, data: list[dict], args, tmp: str, callbacks, peft_config=None):
    from datasets import Dataset
    from trl import DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    class Pretokenized(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

        def _precompute_ref_logps(self, dataset, name, batch_size):
            return dataset

    return Pretokenized(model=model, args=args, train_dataset=Dataset.from_list(data), processing_class=_tiny_tokenizer(tmp),
                        data_collator=DataCollatorForPreference(pad_token_id=0), peft_config=peft_config,
                        callbacks=callbacks)


def _timer(box: dict, dev: str, warm: int, steps: int):
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == warm:
                common.sync(dev)
                box["t0"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == warm + steps:
                common.sync(dev)
                box["t1"] = time.perf_counter()

    return Timer()


def _lora():
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def _result(name: str, box: dict, trainer, data: list[dict], steps: int, dev: str) -> dict:
    t = box["t1"] - box["t0"]
    # pairs per optimizer step x mean pair tokens: the sampler shuffles, so the mean stands for the timed rows
    per_step = trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps
    tokens = steps * per_step * sum(map(_tokens, data)) / len(data)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    res = {"variant": name, "seconds": round(t, 3), "tokens": int(tokens), "tokens_per_s": tokens / t, "steps": steps,
           "batch": f"{trainer.args.per_device_train_batch_size} x {trainer.args.gradient_accumulation_steps}",
           "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
           "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None}
    if dev.startswith("cuda"):
        res["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    return res


def _extra(dev: str) -> dict:
    return dict(use_cpu=True, bf16=False) if dev == "cpu" else {}


def run_trl(size: str, dev: str, data: list[dict], warm: int, steps: int, tmp: str) -> dict:
    from trl import DPOConfig

    model = common.build_model(size, dev)
    model.train()
    box: dict = {}
    args = DPOConfig(output_dir=str(Path(tmp) / "trl"), max_steps=warm + steps, report_to=[], save_strategy="no",
                     disable_tqdm=True, logging_steps=1, **_extra(dev))
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    trainer = _trainer(model, data, args, tmp, [_timer(box, dev, warm, steps)], peft_config=_lora())
    trainer.train()
    res = _result("TRL DPOTrainer defaults (bs8, grad ckpt, ref forward per step)", box, trainer, data, steps, dev)
    del trainer, model
    common.free(dev)
    return res


def run_ours(size: str, dev: str, data: list[dict], warm: int, steps: int, tmp: str) -> dict:
    from peft import get_peft_model
    from trl import DPOConfig

    from phases.dpo import sequence_logps

    rows, accum = 8, 1
    while True:
        model = common.build_model(size, dev)
        model.train()
        pm = get_peft_model(model, _lora())
        if dev.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        try:
            common.sync(dev)
            t0 = time.perf_counter()
            with torch.autocast(dev.split(":")[0], dtype=torch.bfloat16, enabled=dev.startswith("cuda")):
                refs = sequence_logps(pm, data, 0, batch_size=16 if dev.startswith("cuda") else 4)
            common.sync(dev)
            ref_s = time.perf_counter() - t0
            ds = [{**e, **r} for e, r in zip(data, refs)]
            box: dict = {}
            args = DPOConfig(output_dir=str(Path(tmp) / "ours"), max_steps=warm + steps, report_to=[], save_strategy="no",
                             disable_tqdm=True, logging_steps=1, precompute_ref_log_probs=True, gradient_checkpointing=False,
                             per_device_train_batch_size=rows, gradient_accumulation_steps=accum, **_extra(dev))
            trainer = _trainer(pm, ds, args, tmp, [_timer(box, dev, warm, steps)])
            trainer.train()
            break
        except torch.OutOfMemoryError:
            del model, pm
            common.free(dev)
            if rows == 1:
                raise
            rows, accum = rows // 2, accum * 2
            print(f"dpo {size}: out of memory, batch -> {rows} x {accum}", flush=True)
    res = _result("ours (stored reference pass, no grad ckpt)", box, trainer, data, steps, dev)
    ref_tps = sum(map(_tokens, data)) / ref_s
    res.update(ref_pass_seconds=round(ref_s, 3), ref_tokens_per_s=round(ref_tps, 1),
               tokens_per_s_incl_ref=1 / (1 / res["tokens_per_s"] + 1 / ref_tps))
    del trainer, model, pm
    common.free(dev)
    return res


def run(size: str, dev: str, *, cpu: bool = False) -> list[dict]:
    vocab = common.SIZES[size]["vocab_size"]
    if cpu:
        data, warm, steps = make_pairs(48, vocab, (8, 24), (4, 16)), 1, 2
    else:
        data, warm, steps = make_pairs(256, vocab, (32, 256), (16, 384)), 2, 8
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fn in (run_trl, run_ours):
            try:
                r = fn(size, dev, data, warm, steps, tmp)
            except Exception as e:
                import traceback

                traceback.print_exc()
                r = {"variant": fn.__name__, "error": f"{type(e).__name__}: {e}"[:400]}
                common.free(dev)
            r.update(bench="dpo", size=size, params=common.count_params(size))
            for k in ("tokens_per_s", "tokens_per_s_incl_ref"):
                if k in r:
                    r[k] = round(r[k], 1)
            rows.append(r)
            print(f"dpo {size:>5} {r['variant']:62} {r.get('tokens_per_s', r.get('error'))} tok/s", flush=True)
    trl = rows[0].get("tokens_per_s")
    for r in rows:
        r["x_trl"] = round(r["tokens_per_s"] / trl, 2) if trl and "tokens_per_s" in r else None
        if trl and "tokens_per_s_incl_ref" in r:
            r["x_trl_incl_ref"] = round(r["tokens_per_s_incl_ref"] / trl, 2)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1.5B,7B")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT") or "/tmp/bench-dpo")
    a = ap.parse_args(argv)
    dev = "cpu" if a.cpu else "cuda"
    rows = []
    for s in a.sizes.split(","):
        rows += run(s, dev, cpu=a.cpu)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    from state.files import atomic_write_text

    atomic_write_text(Path(a.out) / "dpo.json", json.dumps({"machine": common.machine(dev), "rows": rows}, indent=1) + "\n")
    print(f"wrote {Path(a.out) / 'dpo.json'}")
    return 0 if all("tokens_per_s" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
