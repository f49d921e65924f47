"""The fast SFT trainer (phases/sft_fast_trainer.py): same loss as the plain path, exact mask, batches.

Run: .venv/bin/pytest -m integration tests/integration/test_sft_fast_trainer.py -q   (~20 s on 2 cores)
The kill/resume test of this trainer is tests/crash/test_sft_fast_resume.py.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers_models import tiny  # noqa: E402

pytestmark = pytest.mark.integration

PAIRS = [("Name a color.", "Blue."), ("What is 2 + 2?", "2 + 2 = 4, which is a small even number."),
         ("Give the opposite of hot.", "Cold."), ("Say hello in French, then in Spanish.", "Bonjour. Hola.")]


def _lora_model(seed=0):
    import torch
    from peft import LoraConfig, get_peft_model

    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_pretrained(tiny().path, torch_dtype=torch.float32)
    m = get_peft_model(m, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                     task_type="CAUSAL_LM"))
    for n, p in m.named_parameters():  # non-zero LoRA B so the adapters change the outputs
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    return m


def _examples():
    from phases.sft import encode_example

    return [encode_example(tiny(), i, r) for i, r in PAIRS]


def test_fast_loss_and_gradients_equal_the_plain_loss_in_fp32():
    import torch

    from phases.sft import ResponseOnlyCollator
    from phases.sft_fast_trainer import collate_train, fast_loss

    ex = _examples()
    assert len({len(e["input_ids"]) for e in ex}) > 1, "the batch must need padding"
    m = _lora_model()
    plain = ResponseOnlyCollator(tiny().eos_token_id)(ex)
    ref = m(**plain).loss
    ref.backward()
    g_ref = {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}
    m.zero_grad()
    fast = collate_train(ex, tiny().eos_token_id)
    assert "attention_mask" not in fast
    got = fast_loss(m, fast["input_ids"], fast["labels"])
    got.backward()
    assert torch.allclose(got, ref, rtol=1e-6, atol=1e-6), (got.item(), ref.item())
    for n, p in m.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, g_ref[n], rtol=1e-4, atol=1e-6), n


def test_fast_batches_label_exactly_the_response_and_eos():
    from phases.prompts import response_prompt
    from phases.sft_fast_trainer import collate_train

    loaded = tiny()
    ex = _examples()
    b = collate_train(ex, loaded.eos_token_id)
    for row, ((inst, resp), e) in enumerate(zip(PAIRS, ex)):
        p = len(loaded.encode(response_prompt(inst)))
        completion = loaded.encode(" " + resp) + [loaded.eos_token_id]
        labels = b["labels"][row].tolist()
        n = p + len(completion)
        assert labels[:p] == [-100] * p                        # prompt never trained
        assert labels[p:n] == completion                       # response + eos, exactly
        assert labels[n - 1] == loaded.eos_token_id
        assert labels[n:] == [-100] * (len(labels) - n)        # right padding never trained
        assert b["input_ids"][row, :n].tolist() == e["input_ids"]
    # the width is the longest row rounded up to PAD_MULTIPLE (compiled layers guard on width % 8)
    from phases.sft_fast_trainer import PAD_MULTIPLE

    longest = max(len(e["input_ids"]) for e in ex)
    assert PAD_MULTIPLE == 8 and b["input_ids"].shape[1] % 8 == 0 and longest <= b["input_ids"].shape[1] < longest + 8
    assert longest % 8, "the fixture's longest row should not be a multiple of 8 already (the test would prove nothing)"


def test_fast_loss_ignores_prompt_and_pad_tokens():
    """Changing prompt-side label values that are -100 cannot move the loss; a response label does."""
    import torch

    from phases.sft_fast_trainer import collate_train, fast_loss

    m = _lora_model()
    b = collate_train(_examples(), tiny().eos_token_id)
    with torch.no_grad():
        base = fast_loss(m, b["input_ids"], b["labels"])
        ids = b["input_ids"].clone()
        last_real = [(b["labels"][r] != -100).nonzero().max().item() for r in range(ids.shape[0])]
        for r, j in enumerate(last_real):
            ids[r, j + 1:] = 7  # other pad ids after the last real token: no effect without a mask
        assert torch.equal(fast_loss(m, ids, b["labels"]), base)
        lab = b["labels"].clone()
        r = 0
        j = last_real[r]
        lab[r, j] = (lab[r, j] + 1) % 400
        assert not torch.equal(fast_loss(m, b["input_ids"], lab), base)


def test_decoder_autocast_runs_the_lora_matmuls_in_bf16_and_leaves_the_default_fp32():
    """``fast_loss(autocast_dtype=bf16)`` (what ``AUTOCAST_DECODER`` makes a bf16 Trainer pass): the
    LoRA matmuls run in bf16, the loss stays near the fp32 one and the fp32 adapters still get
    gradients; without it (an fp32 Trainer: CPU) they run in the adapters' fp32. CPU autocast
    stands in for CUDA's."""
    import torch

    from phases import sft_fast_trainer
    from phases.sft_fast_trainer import collate_train, fast_loss

    assert sft_fast_trainer.AUTOCAST_DECODER is True  # on since the sixth H200 run (1.17x, same loss curve)
    m = _lora_model()
    b = collate_train(_examples(), tiny().eos_token_id)
    seen = []
    lora_a = next(mod for n, mod in m.named_modules() if n.endswith("lora_A.default"))
    h = lora_a.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    try:
        ref = fast_loss(m, b["input_ids"], b["labels"])
        got = fast_loss(m, b["input_ids"], b["labels"], autocast_dtype=torch.bfloat16)
    finally:
        h.remove()
    assert seen == [torch.float32, torch.bfloat16]
    assert got.dtype == torch.float32 and abs(got.item() - ref.item()) < 2e-2 * abs(ref.item())
    got.backward()
    grads = [p.grad for n, p in m.named_parameters() if "lora_" in n]
    assert grads and all(g is not None and g.dtype == torch.float32 for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("bf16,asked", [(True, True), (False, True), (True, False)])
def test_the_trainer_runs_the_decoder_under_autocast_exactly_when_asked_and_in_bf16(tmp_path, monkeypatch, bf16, asked):
    """``make_fast_trainer(decoder_autocast=True)``'s training loss passes ``autocast_dtype=bf16`` for
    a bf16 Trainer (the CUDA step) and nothing for an fp32 one (CPU) or when not asked (nf4), and
    returns ``fast_loss``'s value."""
    import torch
    from transformers import TrainingArguments

    from phases import sft_fast_trainer
    from phases.sft_fast_trainer import collate_train, make_fast_trainer

    calls = []
    real = sft_fast_trainer.fast_loss
    monkeypatch.setattr(sft_fast_trainer, "fast_loss",
                        lambda *a, **k: (calls.append(k.get("autocast_dtype")), real(*a, **k))[1])
    m = _lora_model()
    ex = _examples()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, bf16=bf16, report_to=[], max_steps=1)
    tr = make_fast_trainer(m, ex, [], args, None, tiny().eos_token_id, max_tokens=4096, max_rows=4, seed=0,
                           decoder_autocast=asked)
    m.train()
    b = collate_train(ex, tiny().eos_token_id)
    loss = tr.compute_loss(m, b)
    assert calls == [torch.bfloat16 if bf16 and asked else None]
    assert torch.isfinite(loss)


def test_decoder_autocast_is_on_for_a_bf16_lora_on_cuda_only(monkeypatch):
    """Where the ``sft`` step turns the decoder autocast on: CUDA without quantization (measured);
    off on CPU, with nf4 (not measured with it) and with the benchmark's switch off."""
    from phases import sft_fast_trainer
    from phases.sft_fast_trainer import decoder_autocast_record

    on = decoder_autocast_record("cuda:0", None)
    assert on["applied"] is True and on["dtype"] == "bfloat16" and "1.17x" in on["reason"]
    assert decoder_autocast_record("cuda", "none")["applied"] is True
    assert decoder_autocast_record("cpu", None) == {"applied": False, "reason": "not CUDA: fp32 training"}
    nf4 = decoder_autocast_record("cuda", "nf4")
    assert nf4["applied"] is False and "nf4" in nf4["reason"]
    trl = decoder_autocast_record("cuda", None, "trl")
    assert trl["applied"] is False and "trl" in trl["reason"]  # TRL's Trainer keeps its own precision
    monkeypatch.setattr(sft_fast_trainer, "AUTOCAST_DECODER", False)
    assert decoder_autocast_record("cuda", None)["applied"] is False


def test_token_budget_sampler():
    from phases.sft_fast_trainer import TokenBudgetBatchSampler

    lengths = [5, 40, 12, 33, 7, 90, 18, 18, 25, 3, 61, 14, 9]
    s = TokenBudgetBatchSampler(lengths, max_tokens=80, max_rows=4, seed=3)
    e0 = list(s)
    assert sorted(i for b in e0 for i in b) == list(range(len(lengths)))
    for b in e0:
        assert len(b) <= 4
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 80
    s.set_epoch(1)
    e1 = list(s)
    assert sorted(map(sorted, e0)) == sorted(map(sorted, e1)) and len(s) == len(e0)  # same batches each epoch
    assert e0 != e1  # shuffled order per epoch
    s.set_epoch(0)
    assert list(s) == e0
    assert list(TokenBudgetBatchSampler(lengths, 80, 4, seed=3)) == e0


def test_the_trainer_reshuffles_batches_each_epoch(tmp_path, monkeypatch):
    """The Trainer's loop reaches the sampler's set_epoch, so epoch 2 trains a new batch order
    (and the resume test's match across an epoch boundary is not the trivial one)."""
    from phases import sft, sft_fast_trainer

    seen: list[int] = []
    orig = sft_fast_trainer.TokenBudgetBatchSampler.set_epoch
    monkeypatch.setattr(sft_fast_trainer.TokenBudgetBatchSampler, "set_epoch",
                        lambda self, e: (seen.append(int(e)), orig(self, e))[1])
    records = [{"instruction": f"Item {i}.", "response": "word " * (1 + i % 4)} for i in range(8)]
    params = {"trainer": "fast", "device": "cpu", "epochs": 2.0, "save_steps": 100, "dev_fraction": 0.0,
              "per_device_batch_size": 1, "grad_accum": 2, "lora_r": 2, "lora_alpha": 4, "max_seq_len": 128,
              "logging_steps": 1}
    res = sft.run_sft(records, "tiny-random-qwen2", params, tmp_path / "w", tmp_path / "o", 3, lambda *a, **k: None)
    assert res["trainer"] == "fast" and res["gradient_checkpointing"] is False
    assert 0 in seen and 1 in seen, seen
    assert res["metrics"]["global_step"] == 8  # 4 batches of <= 2 rows per epoch x 2 epochs
    assert res["metrics"]["tokens_trained"] > 0


def test_run_sft_records_kernels_and_throughput_and_refuses_liger_on_cpu(tmp_path, monkeypatch):
    """CPU: kernels auto resolves to none, said in the sft_started event and the result (the
    manifest's fields); the throughput window counts this attempt's tokens after its warm-up step;
    kernels liger on CPU fails before any model is loaded."""
    from phases import sft
    from runner.errors import ConfigError

    events = []
    records = [{"instruction": f"Item {i}.", "response": "word " * (1 + i % 4)} for i in range(8)]
    params = {"trainer": "fast", "device": "cpu", "max_steps": 3, "save_steps": 100, "dev_fraction": 0.0,
              "per_device_batch_size": 1, "grad_accum": 2, "lora_r": 2, "lora_alpha": 4, "max_seq_len": 128}
    res = sft.run_sft(records, "tiny-random-qwen2", params, tmp_path / "w", tmp_path / "o", 3,
                      lambda msg, kind="log", **d: events.append({"message": msg, "kind": kind, **d}))
    started = [e for e in events if e["kind"] == "sft_started"]
    assert len(started) == 1 and "kernels none (device cpu" in started[0]["message"]
    assert started[0]["kernels"] == res["kernels"]
    assert started[0]["attention"] == res["attention"] and res["attention"]["sdpa"] == "default"  # CPU: no change
    assert "attention default" in started[0]["message"]
    assert started[0]["decoder_autocast"] == res["decoder_autocast"] == {"applied": False, "reason": "not CUDA: fp32 training"}
    assert "decoder autocast off" in started[0]["message"]
    assert res["kernels"]["requested"] == "auto" and res["kernels"]["applied"] == [] and res["kernels"]["library"] is None
    m = res["metrics"]
    assert m["tokens_this_attempt"] == m["tokens_trained"] > 0 and m["train_tokens_per_s"] > 0
    tp = m["throughput"]
    assert tp["warmup_steps"] == 1 and tp["steps"] == 2  # 3 steps: the first is warm-up
    assert 0 < tp["tokens"] < m["tokens_trained"] and tp["seconds"] > 0 and tp["tokens_per_s"] > 0
    # each timed step begin to end: two steps, so the median is the slower one and both fit in the window
    assert 0 < tp["median_step_s"] <= tp["slowest_step_s"] <= tp["seconds"]

    def no_load(*a, **k):
        raise AssertionError("the model must not be loaded when the kernels setting cannot apply")

    monkeypatch.setattr(sft, "load_model", no_load)
    with pytest.raises(ConfigError, match=r"params\.sft\.kernels = 'liger' cannot apply: device cpu"):
        sft.run_sft(records, "tiny-random-qwen2", {**params, "kernels": "liger"}, tmp_path / "w2", tmp_path / "o2", 3,
                    lambda *a, **k: None)


def test_training_and_its_dev_evaluation_run_inside_the_attention_setting(tmp_path, monkeypatch):
    """run_sft trains and evaluates inside ``variable_shape_attention(device)`` (on CUDA: cuDNN's
    attention out of SDPA's candidates, phases/models/attention.py); here a recording stand-in
    for it, since the CPU has no cuDNN attention to leave out."""
    from contextlib import contextmanager

    from transformers import TrainerCallback

    from phases import sft

    state = {"inside": False, "devices": [], "seen": []}

    @contextmanager
    def recording(device):
        state["devices"].append(device)
        state["inside"] = True
        try:
            yield {"sdpa": "recorded", "reason": "test"}
        finally:
            state["inside"] = False

    class Probe(TrainerCallback):
        def on_step_begin(self, args, st, control, **kw):
            state["seen"].append(("step", state["inside"]))

        def on_evaluate(self, args, st, control, **kw):
            state["seen"].append(("eval", state["inside"]))

    monkeypatch.setattr(sft, "variable_shape_attention", recording)
    records = [{"instruction": f"Item {i}.", "response": "word " * (1 + i % 4)} for i in range(10)]
    params = {"trainer": "fast", "device": "cpu", "max_steps": 2, "save_steps": 100, "dev_fraction": 0.2,
              "lora_r": 2, "lora_alpha": 4, "max_seq_len": 128}
    sft.run_sft(records, "tiny-random-qwen2", params, tmp_path / "w", tmp_path / "o", 3, lambda *a, **k: None,
                callbacks=[Probe()])
    assert state["devices"] == ["cpu"] and not state["inside"]
    assert ("step", True) in state["seen"] and ("eval", True) in state["seen"]
    assert all(inside for _, inside in state["seen"]), state["seen"]


def test_compiled_layers_train_like_eager(tmp_path):
    """params.sft.compile: layers (torch.compile of every decoder layer, Inductor, dynamic shapes)
    gives the eager step's losses in fp32 over steps of different batch shapes (its fused loss's
    chunk math compiled too), records what it compiled in the result (the manifest's ``compile``) and the sft_started event, and saves an
    adapter with the same keys as the eager step's."""
    import json

    from safetensors import safe_open

    from phases import sft

    records = [{"instruction": f"Item {i}.", "response": "word " * (1 + 3 * (i % 4))} for i in range(8)]
    params = {"trainer": "fast", "device": "cpu", "max_steps": 4, "save_steps": 100, "dev_fraction": 0.0,
              "per_device_batch_size": 2, "grad_accum": 1, "lora_r": 2, "lora_alpha": 4, "lora_dropout": 0.0,
              "max_seq_len": 128, "logging_steps": 1, "kernels": "none"}
    import torch._dynamo

    runs, events = {}, []
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for mode in ("off", "layers"):
        runs[mode] = sft.run_sft(records, "tiny-random-qwen2", {**params, "compile": mode}, tmp_path / f"w-{mode}",
                                 tmp_path / f"o-{mode}", 3,
                                 lambda msg, kind="log", **d: events.append({"message": msg, "kind": kind, **d}))
    eager, comp = (runs[m]["loss_curve"]["train"] for m in ("off", "layers"))
    assert [x["step"] for x in eager] == [x["step"] for x in comp] == [1, 2, 3, 4]
    for a, b in zip(eager, comp):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-5), (eager, comp)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # Inductor really compiled the layers
    rec = runs["layers"]["compile"]
    # the fast trainer's fused loss is compiled with the layers (its chunk math: phases.sft_fast.compiled_ce_chunk)
    assert rec["applied"] is True and rec["layers"] == 2 and rec["loss"] is True
    assert runs["off"]["compile"]["applied"] is False and runs["off"]["compile"]["loss"] is False
    started = [e for e in events if e["kind"] == "sft_started"]
    assert "not compiled" in started[0]["message"] and "compiled layers (2) + loss" in started[1]["message"]
    assert started[1]["compile"] == rec
    keys = []
    for mode in ("off", "layers"):
        with safe_open(str(tmp_path / f"o-{mode}" / "adapter" / "adapter_model.safetensors"), "pt") as f:
            keys.append(sorted(f.keys()))
    assert keys[0] == keys[1] and keys[0] and not any("_orig_mod" in k for k in keys[1])
    assert json.loads((tmp_path / "o-layers" / "adapter" / "adapter_config.json").read_text())["r"] == 2


def test_compiled_layers_share_two_graphs_past_the_recompile_limit():
    """Every decoder layer runs compiled from one shared graph (plus one for layer 0, whose input
    does not require grad), for more layers than Dynamo's recompile limit (8) and over batch shapes
    of different widths and row counts: no per-layer or per-shape recompiles that would end in an
    eager fallback (docs/performance.md "Issue 15, fourth run")."""
    import torch
    import torch._dynamo
    from peft import get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from phases import sft
    from phases.sft_fast_trainer import fast_loss
    from phases.sft_speed import CompileChoice, compile_layers

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    cfg = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=12, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256)
    torch.manual_seed(0)
    m = get_peft_model(Qwen2ForCausalLM(cfg), sft._lora_config({**sft.SFT_DEFAULTS, "lora_dropout": 0.0})).train()
    comp = compile_layers(m, CompileChoice("layers", True))
    assert comp.layers == 12 > torch._dynamo.config.recompile_limit
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):  # a fallback to eager would raise here
        for rows, width in ((4, 50), (3, 70), (5, 33), (2, 90)):
            ids = torch.randint(0, 256, (rows, width))
            fast_loss(m, ids, ids).backward()
    stats = torch._dynamo.utils.counters["stats"]
    assert stats["unique_graphs"] == 2, dict(stats)
