"""Exact/near dedup (ROUGE-L) and the held-out leakage check.

Run: .venv/bin/pytest tests/unit/test_dedup.py
"""

import random
import time

from phases.dedup import (
    dedup,
    exact_dedup,
    lcs_length,
    leakage_report,
    longest_common_substring,
    normalize_key,
    rouge_l_f1,
    tokenize,
)


def _lcs_dp(a, b):
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[-1]))
        prev = cur
    return prev[-1]


def test_bit_parallel_lcs_matches_dp():
    rng = random.Random(0)
    for _ in range(500):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        assert lcs_length(a, b) == _lcs_dp(a, b)


def test_tokenize_and_key():
    assert tokenize("Write  a HAIKU, about: rain!") == ["write", "a", "haiku", "about", "rain"]
    assert normalize_key("  Name 3 colors. ") == normalize_key("name 3 colors")
    assert rouge_l_f1("a b c d", "a b c d") == 1.0
    assert rouge_l_f1("", "a") == 0.0


def test_exact_dedup_keeps_first():
    r = exact_dedup(["List three fruits.", "list three fruits", "Name a color.", "  "])
    assert r.kept == [0, 2]
    assert [(d["index"], d["reason"], d["match"]) for d in r.dropped] == [(1, "exact", 0), (3, "empty", None)]


def test_near_duplicate_caught_and_non_duplicate_kept():
    texts = [
        "Write a short poem about the ocean at night.",
        "Write a short poem about the ocean at sunrise.",  # near-dup of 0
        "Explain how a bicycle gear system works.",
        "Summarize the plot of Romeo and Juliet in two sentences.",
        "Write a short story about the ocean at night.",  # near-dup of 0 too (F1 0.89)
        "Write a poem.",  # shares words with 0 but F1 = 0.5: kept
    ]
    r = dedup(texts, threshold=0.7)
    assert r.kept == [0, 2, 3, 5]
    near = {d["index"]: d for d in r.dropped}
    assert near[1]["reason"] == "near" and near[1]["match"] == 0 and near[1]["score"] >= 0.7
    assert near[4]["match"] == 0


def test_dedup_against_pool():
    r = dedup(["Name three primary colors.", "Describe a cat."], against=["name three primary colors please"])
    assert r.kept == [1]
    assert r.dropped[0]["match_against"] == 0 and r.dropped[0]["match"] is None


def test_dedup_matches_brute_force_on_random_texts():
    rng = random.Random(1)
    vocab = [f"w{i}" for i in range(40)]
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(3, 12))) for _ in range(300)]
    # plant near duplicates by editing one token
    for k in range(0, 300, 10):
        toks = texts[k].split()
        toks[0] = "edited"
        texts.append(" ".join(toks))
    got = dedup(texts, threshold=0.7).kept
    kept = []
    for i, t in enumerate(texts):
        ti = tokenize(t)
        if all(normalize_key(t) != normalize_key(texts[j]) and rouge_l_f1(ti, tokenize(texts[j])) < 0.7 for j in kept):
            kept.append(i)
    assert got == kept


def test_dedup_5k_runs_quickly(capsys):
    rng = random.Random(2)
    verbs = ["Write", "List", "Explain", "Describe", "Summarize", "Name", "Give", "Rewrite"]
    vocab = [f"word{i}" for i in range(3000)] + ["the", "a", "of", "to", "and", "in", "for", "with"] * 40
    texts = [f"{rng.choice(verbs)} " + " ".join(rng.choice(vocab) for _ in range(rng.randint(5, 20))) + "." for _ in range(5000)]
    texts += [t.replace("the", "this", 1) for t in texts[:200]]  # planted near-duplicates
    t0 = time.perf_counter()
    r = dedup(texts)
    with capsys.disabled():
        print(f"\ndedup of 5000 texts: {time.perf_counter() - t0:.2f}s, kept {len(r.kept)}")
    assert 4000 < len(r.kept) <= 5000


def test_leakage_catches_planted_overlap():
    heldout = [
        "Write a formal letter to your landlord asking for the kitchen sink to be repaired before the end of the month, and keep it under one hundred words.",
        "List three prime numbers.",
        "Explain photosynthesis to a ten year old.",
    ]
    train = [
        "Describe the water cycle.",
        # planted: shares a 20-token run with heldout[0]
        "Please write a formal letter to your landlord asking for the kitchen sink to be repaired before the end of the month, and keep it short.",
        "list three prime numbers",  # exact after normalisation
        "List three prime numbers, please.",  # near (ROUGE-L)
        "Name the capital of Peru.",
    ]
    rep = leakage_report(train, heldout)
    assert not rep["passed"]
    assert rep["offending_train_indices"] == [1, 2, 3]
    kinds = {(p["train_index"], p["heldout_index"]): p["kind"] for p in rep["pairs"]}
    assert kinds == {(1, 0): "substring", (2, 1): "exact", (3, 1): "rouge"}
    assert rep["counts"] == {"exact": 1, "substring": 1, "rouge": 1, "offending_train": 3, "offending_heldout": 2}
    assert rep["pairs"][0]["common_substring_tokens"] >= 13


def test_leakage_substring_needs_fraction_of_shorter():
    long_a = "alpha " * 0 + " ".join(f"t{i}" for i in range(40))
    long_b = " ".join(f"t{i}" for i in range(14)) + " " + " ".join(f"u{i}" for i in range(60))
    rep = leakage_report([long_b], [long_a], rouge_threshold=None)
    assert rep["passed"]  # 14-token overlap but only 14/40 = 0.35 of the shorter text
    assert longest_common_substring(tokenize(long_a), tokenize(long_b)) == 14


def test_leakage_clean_sets_pass():
    rep = leakage_report(["Describe a cat."], ["Describe a spaceship engine in detail."])
    assert rep["passed"] and rep["pairs"] == [] and rep["n_train"] == 1
