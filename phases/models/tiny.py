"""A tiny randomly initialised Qwen2 model, built fully offline, for tests that need no real weights.

Run: ``.venv/bin/python -m phases.models.tiny OUT_DIR [--seed N]`` (writes a loadable model folder).

Contract:
- The tokenizer is a byte-level BPE trained with the `tokenizers` library on a fixed corpus
  (below), so every string encodes (no unknown tokens). Special tokens: ``<|endoftext|>`` (id 0,
  eos and pad), ``<|im_start|>`` (1), ``<|im_end|>`` (2). ``"A"``, ``" A"``, ``"B"``, ``" B"`` are
  single tokens (the critic scores them).
- The tokenizer carries a real ChatML chat template, so the loader's guard is exercised against
  a template exactly as with Qwen.
- Weights: ``torch.manual_seed(seed)`` then ``Qwen2ForCausalLM(config)``; same seed -> identical
  files. ``max_position_embeddings`` is small (256 by default) so over-long prompts are cheap to test.
- The folder gets a ``cai_model.json`` marker naming the profile ``tiny-random-qwen2``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "Water freezes at 0 degrees Celsius, which is 32 degrees Fahrenheit.",
    "List three prime numbers: 2, 3, 5.",
    "Translate to Pig Latin: hello world becomes ellohay orldway.",
    "Instruction: write a short poem about the sea.\nResponse: The sea is wide and blue.",
    "The quick brown fox jumps over the lazy dog.",
    "Output exactly one letter on the next line: A or B\nLabel: A",
    "Output exactly one letter on the next line: A or B\nLabel: B",
    "A B A B A B. A or B? A and B.",
    "def add(a, b):\n    return a + b\n",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000.",
]


def _train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repetition makes the frequent pairs (" A", " B", ...) merge deterministically.
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(
    out_dir: str | os.PathLike,
    seed: int = 0,
    *,
    vocab_size: int = 400,
    hidden_size: int = 64,
    num_layers: int = 2,
    max_position_embeddings: int = 256,
) -> Path:
    """Write a tiny random Qwen2 model + tokenizer to ``out_dir`` (atomically) and return its path.

    An existing ``out_dir`` is replaced. Deterministic given ``seed`` and the keyword arguments.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tokenizer = _train_tokenizer(vocab_size)
        for s in ("A", " A", "B", " B"):
            ids = tokenizer.encode(s, add_special_tokens=False)
            if len(ids) != 1:  # the critic needs these as single tokens
                raise RuntimeError(f"tiny tokenizer: {s!r} encodes to {ids}, expected one token")
        config = Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 2,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=max_position_embeddings,
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        )
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).to(torch.float32)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        marker = {
            "profile": "tiny-random-qwen2",
            "kind": "random",
            "seed": seed,
            "built_by": "phases.models.tiny.build_tiny_model",
            "config": {
                "vocab_size": config.vocab_size,
                "hidden_size": hidden_size,
                "num_layers": num_layers,
                "max_position_embeddings": max_position_embeddings,
            },
        }
        (tmp / "cai_model.json").write_text(json.dumps(marker, sort_keys=True, indent=1) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        aside = None
        if out.exists():  # rename the old folder aside first: the name never points at a torn one
            aside = out.with_name(f".{out.name}.old-{os.getpid()}")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(out, aside)
        os.replace(tmp, out)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build the tiny random Qwen2 test model.")
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(build_tiny_model(args.out_dir, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
