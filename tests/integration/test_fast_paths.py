"""The fast paths give the plain paths' results: fastgen (static cache + graph decode loop),
prefix-cached critic scoring, and the SFT step's loss pieces (tiny Qwen2 and SmolLM2, CPU, fp32)."""
from __future__ import annotations

import pytest

from helpers_models import smollm2, tiny
from phases.models.backends.base import GenerationParams

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _plain_reference(monkeypatch):
    """``backend.generate``/``next_token_logprobs`` are the plain references in these tests."""
    for m in (tiny(), smollm2()):
        monkeypatch.setattr(m.backend, "fast_paths", False)


def test_backend_routes_to_the_fast_paths_when_enabled(monkeypatch):
    from phases.critic import CANDIDATES

    m = tiny()
    params = GenerationParams.greedy(6)
    plain_gen = m.generate(PROMPTS, params)
    plain_lp = m.next_token_logprobs(PROMPTS, list(CANDIDATES))
    monkeypatch.setattr(m.backend, "fast_paths", True)
    calls = []
    from phases.models import prefix_cache
    from phases.models.backends import fastgen

    monkeypatch.setattr(fastgen, "generate_bucket", _spy(fastgen.generate_bucket, calls, "gen"))
    monkeypatch.setattr(prefix_cache, "score_ids", _spy(prefix_cache.score_ids, calls, "score"))
    assert [g.token_ids for g in m.generate(PROMPTS, params)] == [g.token_ids for g in plain_gen]
    fast_lp = m.next_token_logprobs(PROMPTS, list(CANDIDATES))
    assert max(abs(a[c] - b[c]) for a, b in zip(plain_lp, fast_lp) for c in CANDIDATES) < 1e-4
    assert "gen" in calls and "score" in calls


def _spy(fn, calls, tag):
    def wrapped(*a, **k):
        calls.append(tag)
        return fn(*a, **k)

    return wrapped

PROMPTS = [
    "Water freezes at",
    "Instruction: Name three colours.\nResponse:",
    "The capital of France is",
    "List three prime numbers: 2, 3,",
    "The quick brown fox jumps over the lazy dog. " * 3,
]


@pytest.mark.parametrize("loader", [tiny, smollm2], ids=["tiny-qwen2", "smollm2-llama"])
def test_fast_greedy_generation_equals_plain(loader):
    from phases.models.backends import fastgen

    m = loader()
    be = m.backend
    for params in (GenerationParams.greedy(8), GenerationParams.greedy(8, repetition_penalty=1.3)):
        plain = be.generate(PROMPTS, params)
        for bs in (8, 2):  # one padded bucket; several buckets incl. a short last one
            fast = fastgen.generate(be, PROMPTS, params, batch_size=bs)
            assert [g.token_ids for g in fast] == [g.token_ids for g in plain], (params, bs)
            assert [(g.text, g.finish_reason, g.n_tokens, g.prompt_tokens) for g in fast] == [
                (g.text, g.finish_reason, g.n_tokens, g.prompt_tokens) for g in plain
            ]
    # Reused buffers (same shape, other prompts) carry nothing over from the last call.
    again = fastgen.generate(be, PROMPTS[::-1], GenerationParams.greedy(8), batch_size=8)
    assert [g.token_ids for g in again] == [g.token_ids for g in be.generate(PROMPTS[::-1], GenerationParams.greedy(8))]


def test_fast_sampling_and_stop_strings_equal_plain():
    """Sampling: same seeds, same tokens. Checked on SmolLM2 (real, peaked distributions): on a
    random model's near-flat distribution, probabilities equal to ~1e-7 swap places in the sort
    under any change of rounding, so equality there holds in distribution, not token for token."""
    from phases.models.backends import fastgen

    be = smollm2().backend
    seeds = [11, 12, 13, 14, 15]
    for params in (GenerationParams(max_new_tokens=8, temperature=0.8), GenerationParams(max_new_tokens=8, temperature=0.8, stop=("e",))):
        plain = be.generate(PROMPTS, params, seeds)
        fast = fastgen.generate(be, PROMPTS, params, seeds, batch_size=8)
        assert [(g.token_ids, g.text, g.finish_reason) for g in fast] == [(g.token_ids, g.text, g.finish_reason) for g in plain]
        alone = fastgen.generate(be, PROMPTS[1:2], params, seeds[1:2], batch_size=1)
        assert alone[0].token_ids == fast[1].token_ids  # a row depends on its own seed only
    assert any(g.finish_reason == "stop" for g in plain)


def test_fast_generation_stops_at_a_stop_token_like_plain(monkeypatch):
    from phases.models.backends import fastgen

    be = tiny().backend
    params = GenerationParams.greedy(10)
    first = be.generate(PROMPTS, params)
    stop = first[0].token_ids[3]  # a token greedy decoding reaches: row 0 must stop there
    monkeypatch.setattr(be, "stop_token_ids", frozenset({stop}))
    plain = be.generate(PROMPTS, params)
    fast = fastgen.generate(be, PROMPTS, params, batch_size=8)
    assert plain[0].finish_reason == "eos" and plain[0].n_tokens <= 4
    assert [(g.token_ids, g.text, g.finish_reason) for g in fast] == [(g.token_ids, g.text, g.finish_reason) for g in plain]


@pytest.mark.parametrize("loader", [tiny, smollm2], ids=["tiny-qwen2", "smollm2-llama"])
def test_prefix_cached_critic_logprobs_equal_uncached(loader):
    from phases.critic import CANDIDATES, ORDERS, build_critic_prompt, judge
    from phases.models import prefix_cache

    m = loader()
    items = [
        {"instruction": "Write a haiku about rain.", "response": "Rain on the roof.\n\nMore text."},
        {"instruction": "Do the thing with the stuff.", "response": "No."},
        {"instruction": "List three prime numbers.", "response": "2, 3, 5"},
        {"instruction": "Explain photosynthesis to a child in two sentences.", "response": "Plants eat light."},
    ]
    prompts = [build_critic_prompt("pair", it, o) for it in items for o in ORDERS]
    rows = [m.encode(p) for p in prompts]
    groups = prefix_cache.shared_prefix_groups(rows)
    assert len(groups) == 2 and all(p >= 20 for p, _ in groups), groups  # one rubric prefix per label order
    plain = m.next_token_logprobs(prompts, list(CANDIDATES))
    for _ in range(2):  # second call reuses the memoised prefix K/V
        fast = prefix_cache.next_token_logprobs(m.backend, prompts, list(CANDIDATES), max_batch=3)
        assert max(abs(a[c] - b[c]) for a, b in zip(plain, fast) for c in CANDIDATES) < 1e-4
    # The critic itself accepts the fast scorer (same Scorer protocol).
    class Fast:
        def next_token_logprobs(self, ps, cands):
            return prefix_cache.next_token_logprobs(m.backend, ps, cands)

    for a, b in zip(judge(Fast(), "pair", items), judge(m, "pair", items)):
        assert a.label == b.label and abs(a.margin - b.margin) < 1e-4


def test_shared_prefix_groups_do_not_fragment():
    from phases.models.prefix_cache import shared_prefix_groups

    head = list(range(100, 140))
    rows = [head + [1, 2, 3, i, 9] for i in range(6)] + [head[:5] + [7] * 30 + [i, 9] for i in range(6)]
    groups = shared_prefix_groups(rows)
    assert sorted((p, sorted(i)) for p, i in groups) == [(35, list(range(6, 12))), (43, list(range(6)))]
    assert shared_prefix_groups([[5, 6, 7]]) == [(2, [0])]  # the last token always stays outside


def test_sft_fast_loss_and_grads_equal_the_masked_reference():
    """The fused linear + CE over several chunks (chunk=7) equals the model's own loss with an
    attention mask, in value and in every LoRA gradient (fp32)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from phases.sft import ResponseOnlyCollator
    from phases.sft_fast import fused_linear_cross_entropy
    from phases.sft_fast_trainer import collate_train
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False)
    model = get_peft_model(Qwen2ForCausalLM(cfg), LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                              target_modules="all-linear", task_type="CAUSAL_LM"))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)  # non-zero adapters, so their gradients are tested
    g = torch.Generator().manual_seed(1)
    ex = []
    for n in (5, 17, 3, 11):
        ids = torch.randint(3, 300, (n,), generator=g).tolist()
        ex.append({"input_ids": ids, "labels": [-100] * 2 + ids[2:]})  # the first two tokens: prompt
    plain = ResponseOnlyCollator(0)(ex)
    ref = model(**plain).loss
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    batch = collate_train(ex, 0)
    assert "attention_mask" not in batch
    base = model.get_base_model()
    hidden = base.get_decoder()(input_ids=batch["input_ids"]).last_hidden_state
    loss_sum, n = fused_linear_cross_entropy(hidden, base.get_output_embeddings().weight, batch["labels"], chunk=7)
    assert n == sum(len(e["input_ids"]) - 2 for e in ex) > 7  # every labelled token; several chunks
    loss = loss_sum / n
    loss.backward()
    assert abs(float(loss) - float(ref)) < 1e-5
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, ref_grads[name], atol=1e-6, rtol=1e-4), name


def test_compiled_loss_chunk_equals_the_eager_one():
    """The fused loss with its chunk math through torch.compile (the step's compiled mode) gives the
    eager loss and hidden-state gradient in fp32, over several chunks of different row counts (a
    dynamic shape: the last chunk is shorter) and on a second call with another token count."""
    import torch

    from phases.sft_fast import fused_linear_cross_entropy

    g = torch.Generator().manual_seed(0)
    W = torch.randn(97, 16, generator=g) * 0.3
    for t in (23, 31):
        hidden = torch.randn(2, t, 16, generator=g)
        labels = torch.randint(0, 97, (2, t), generator=g)
        labels[0, :5] = labels[1, t - 3:] = -100  # prompt and pad positions
        out = {}
        for compiled in (False, True):
            h = hidden.clone().requires_grad_(True)
            loss, n = fused_linear_cross_entropy(h, W, labels, chunk=7, compiled=compiled)
            loss.backward()
            out[compiled] = (float(loss), n, h.grad)
        assert out[True][1] == out[False][1] > 14  # several chunks
        assert out[True][0] == pytest.approx(out[False][0], rel=1e-6)
        assert torch.allclose(out[True][2], out[False][2], atol=1e-6, rtol=1e-5)
        assert out[True][2][0, 5:].abs().sum() > 0 and out[True][2][:, -1].abs().sum() == 0  # no label after the last


def test_token_budget_batches_cover_every_example_once():
    from phases.sft_fast import token_budget_batches

    lengths = [5, 9, 3, 12, 100, 7, 7, 7, 64, 1]
    batches = token_budget_batches(lengths, 24, seed=3, megabatch=4)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 24
    assert batches == token_budget_batches(lengths, 24, seed=3, megabatch=4)


def test_collate_right_padded_labels_only_masked_in_tokens():
    """The raw-id collator (benchmarks): right padding, -100 on pads and loss-mask zeros, no attention mask."""
    from phases.sft_fast import collate_right_padded

    b = collate_right_padded([[5, 6, 7], [8]], 0, [[0, 1, 1], [1]])
    assert set(b) == {"input_ids", "labels", "n_tokens"} and b["n_tokens"] == 4
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert collate_right_padded([[1, 2]], 0)["labels"].tolist() == [[1, 2]]  # default: every token trained
