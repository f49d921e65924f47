"""The method's "CI grep" rule: a model is loaded only through the canonical loader
(phases/models/loader.py, the contamination guard). Any other `from_pretrained(`,
`from_config(` or vLLM `LLM(` call in the project's code fails this test unless it is one of
the named exceptions below, each with its reason. An exception that no longer occurs fails too,
so the list stays true.

Run: .venv/bin/python -m pytest tests/unit/test_model_loading_rule.py -q
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DIRS = ("phases", "runner", "state", "benchmarks", "tests")
PATTERN = re.compile(r"\.from_pretrained\(|\.from_config\(|\bLLM\(")

# path -> (how many matches, why it is allowed)
ALLOWED = {
    "phases/models/loader.py": (2, "the canonical loader itself (tokenizer and model, behind the guard)"),
    "phases/models/backends/vllm.py": (1, "vLLM engine built by the loader (load_model(..., backend='vllm'))"),
    "phases/models/embedded.py": (3, "one-time GGUF -> safetensors conversion of an embedded model; it "
                                     "serves nothing, and the result is loaded through the loader"),
    "phases/evaluate.py": (1, "PeftModel.from_pretrained attaches an adapter to a model the loader loaded"),
    "tests/integration/test_models_guard.py": (1, "a raw tokenizer with its chat template intact, to prove "
                                                  "the guard catches it"),
    "benchmarks/bench_dpo.py": (1, "a tokenizer only, for the benchmark's random-token pairs; no model"),
    "benchmarks/bench_32b.py": (1, "a tiny tokenizer only, for the benchmark's random-token rows; no model"),
    "tests/integration/test_sft_fast_trainer.py": (1, "a second copy of the tiny model as the plain-loss reference "
                                                      "in the fast-vs-plain fp32 equality test"),
    "benchmarks/bench_sft.py": (1, "a tokenizer only, to count tokens of a benchmark dataset; no model"),
    "tests/integration/test_model_cache_race.py": (1, "loads the tokenizer of the cached folder, to prove a "
                                                      "concurrent prepare never leaves a half-written folder"),
    "benchmarks/bench_vllm.py": (1, "vLLM on random weights for throughput and HF-vs-vLLM equality (its VLLMBackend "
                                    "row goes through the loader); benchmark only, no pipeline data"),
    "benchmarks/bench_unsloth.py": (2, "Unsloth's own loader on a random-weight benchmark model (Unsloth patches at "
                                       "load; docstring + call); benchmark only, no pipeline data"),
    "tests/unit/test_model_loading_rule.py": (0, "this file names the patterns"),
}


def _matches() -> dict[str, int]:
    found: dict[str, int] = {}
    for d in DIRS:
        for path in sorted((ROOT / d).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "tests/unit/test_model_loading_rule.py":
                continue
            n = len(PATTERN.findall(path.read_text(encoding="utf-8", errors="replace")))
            if n:
                found[rel] = n
    return found


def test_models_are_loaded_only_through_the_canonical_loader():
    found = _matches()
    bad = {p: n for p, n in found.items() if p not in ALLOWED or n > ALLOWED[p][0]}
    assert not bad, ("model/tokenizer loading outside the canonical loader (phases/models/loader.py): "
                     f"{bad}. Load through phases.models.loader.load_model, or add a named exception "
                     "with its reason to ALLOWED in this test")


def test_every_named_exception_still_occurs():
    found = _matches()
    stale = [p for p, (n, _why) in ALLOWED.items() if n and found.get(p, 0) != n]
    assert not stale, f"exceptions listed in ALLOWED that changed or no longer occur: {stale}; update the list"
