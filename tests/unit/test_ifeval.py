"""IFEval benchmark (phases/ifeval): checkers per instruction id, loose variants, the four
metrics on hand-computed cases, the pinned data file and offline tokenization.

Run: .venv/bin/pytest tests/unit/test_ifeval.py -q
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from phases import ifeval
from phases.ifeval import registry, textutil
from phases.ifeval.data import DATA_PATH, DATA_SHA256, load_prompts

# (instruction id, kwargs, responses that follow, responses that do not)
CASES = [
    ("change_case:capital_word_frequency", {"capital_frequency": 3, "capital_relation": "at least"},
     ["WE NEED THREE capitals here.", "The U.S. and NASA and AI."],
     ["We Need Only ONE.", "HELLO-WORLD is one token, AND this."]),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "less than"},
     ["Only ONE here."], ["AI AND ML"]),
    ("change_case:english_capital", {},
     ["THIS IS AN ENGLISH SENTENCE ABOUT THE WEATHER TODAY."],
     ["This is not all caps.", "THIS IS ALMOST ALL CAPS BUT not quite."]),
    ("change_case:english_lowercase", {},
     ["this is an english sentence about the weather today."],
     ["This has a Capital letter.", "le chat est sur le tapis et il fait beau aujourd'hui."]),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem about cats."},
     ["write a poem about cats. Cats are soft.", "  Write a poem about cats.\nMeow."],
     ["Here is a poem: Write a poem about cats.", "Write a poem about dogs."]),
    ("combination:two_responses", {},
     ["Answer one.\n******\nAnswer two.", "******first******second"],
     ["Same.\n******\nSame.", "a ****** ****** b", "only one answer", "a******b******c"]),
    ("detectable_content:number_placeholders", {"num_placeholders": 2},
     ["Dear [name], see you at [address].", "[a][b][c]"], ["Dear [name].", "[a\nb] [c"]),
    ("detectable_content:postscript", {"postscript_marker": "P.S."},
     ["Hello.\n\nP.S. See you.", "Hello.\np. s. lowercase works too"], ["Hello. PS see you.", "P.P.S only"]),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"},
     ["Hi.\nP.P.S. more"], ["Hi.\nP.S. only one"]),
    ("detectable_format:constrained_response", {},
     ["My answer is yes.", "Well... My answer is maybe. Because."], ["My answer is Yes.", "Yes."]),
    ("detectable_format:json_format", {},
     ['```json\n{"a": 1}\n```', '  [1, 2, 3]  ', '```\n{"b": [true, null]}\n```'],
     ['{"a": 1} trailing text', "Here is JSON: {}", '{"a": 1,}']),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2},
     ["SECTION 1\nfoo\nSECTION 2\nbar", "SECTION 1 a SECTION 2 b SECTION 3 c"],
     ["SECTION 1\nfoo", "Section 1\nfoo\nSection 2\nbar", "SECTION one\nSECTION two"]),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3},
     ["* a\n* b\n- c", "Intro\n  * a\n  * b\n  * c\nEnd"],
     ["* a\n* b", "* a\n* b\n* c\n* d", "**bold**\n* a\n* b"]),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2},
     ["*one* and **two**", "*a*\n*b*"], ["*one* and ** **", "*one\ntwo*", "no highlights"]),
    ("detectable_format:title", {},
     ["<<Poem of Joy>>\nText", "text <<t>> text"], ["<< >>\ntext", "<Title>", "<<broken\ntitle>>"]),
    ("keywords:existence", {"keywords": ["cat", "Dog"]},
     ["A CAT and a dog.", "concatenate dogma"], ["A cat only.", "nothing"]),
    ("keywords:forbidden_words", {"forbidden_words": ["bad", "evil"]},
     ["A badge is fine.", "devilish but allowed"], ["That is BAD.", "pure evil!"]),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "at least"},
     ["cat, Cat", "category cat"], ["one cat", "dog"]),
    ("keywords:frequency", {"keyword": "the", "frequency": 2, "relation": "less than"},
     ["the end", "no article"], ["the the", "There they go"]),
    ("keywords:letter_frequency", {"letter": "a", "let_frequency": 4, "let_relation": "at least"},
     ["A banana"], ["bb a", "AAb"]),
    ("keywords:letter_frequency", {"letter": "!", "let_frequency": 2, "let_relation": "less than"},
     ["Hi!"], ["Hi!!"]),
    ("language:response_language", {"language": "fr"},
     ["Le chat est sur le tapis et il fait beau aujourd'hui.", "12345 67890"],
     ["The cat is on the mat and the weather is nice today."]),
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "Second"},
     ['First paragraph.\n\n"Second, paragraph.', "First.\n\nsecond. word"],
     ["First.\n\nThird paragraph.", "a\n\nsecond\n\nc", "First.\n\nSeconds later."]),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3},
     ["a\n***\nb\n***\nc", "***\na *** b *** c\n***"],
     ["a\n***\nb", "a *** *** b *** c", "a\n\nb\n\nc"]),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "at least"},
     ["One. Two! Three?", "Mr. Smith left. He came back. Then he slept."],
     ["Mr. Smith went to Washington. He left.", "Dr. Who arrived at 5 p.m. today."]),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"},
     ["Dr. Who arrived at 5 p.m. today."], ["One. Two."]),
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"},
     ["one two three four", "one-two three"], ["one two three four five", "don't won't can't"]),
    ("length_constraints:number_words", {"num_words": 3, "relation": "at least"},
     ["don't stop", "a b c"], ["a b"]),
    ("punctuation:no_comma", {}, ["No commas here."], ["Yes, commas.", "a,b"]),
    ("startend:end_checker", {"end_phrase": "Any other questions?"},
     ['Text. any other QUESTIONS?', 'Text. Any other questions?"\n'],
     ["Any other questions? Thanks.", "Any other question?"]),
    ("startend:quotation", {}, ['  "quoted"  ', '"a\nb"'], ['"', "no quotes", '"open only']),
]


def test_every_instruction_id_has_cases():
    assert len(ifeval.INSTRUCTION_IDS) == 25
    assert {c[0] for c in CASES} == set(ifeval.INSTRUCTION_IDS)


@pytest.mark.parametrize("iid,kwargs,passing,failing", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_checker_pass_and_fail(iid, kwargs, passing, failing):
    for response in passing:
        assert registry.check_instruction(iid, response, kwargs) is True, response
        assert ifeval.follows(iid, kwargs, response) == (True, True)
    for response in failing:
        assert registry.check_instruction(iid, response, kwargs) is False, response
        assert ifeval.follows(iid, kwargs, response)[0] is False


def test_blank_response_follows_nothing():
    for iid in ("punctuation:no_comma", "change_case:english_lowercase", "keywords:forbidden_words"):
        kwargs = {"forbidden_words": ["x"]} if iid == "keywords:forbidden_words" else {}
        assert ifeval.follows(iid, kwargs, "   \n ") == (False, False)


def test_loose_variants_forgive_first_last_line_and_stars():
    assert len(ifeval.loose_variants("a\nb\nc")) == 8
    assert ifeval.loose_variants("*a*\nb\n*c*")[1:5] == ["a\nb\nc", "b\n*c*", "*a*\nb", "b"]
    # preamble line with capitals: strict fails, loose (first line removed) passes
    assert ifeval.follows("change_case:english_lowercase", {},
                          "Sure:\nthis is a plain english sentence about cats.") == (False, True)
    # markdown bold hides the quote: stripping '*' makes it start and end with '"'
    assert ifeval.follows("startend:quotation", {}, '**"hello"**') == (False, True)
    assert ifeval.follows("punctuation:no_comma", {}, "Sure, here:\nno commas\nbye, now") == (False, True)


def _hand_prompts():
    return [
        {"key": 1, "prompt": "p1", "instruction_id_list": ["punctuation:no_comma", "startend:quotation"],
         "kwargs": [{}, {}]},
        {"key": 2, "prompt": "p2", "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]},
        {"key": 3, "prompt": "p3",
         "instruction_id_list": ["detectable_format:title", "length_constraints:number_words"],
         "kwargs": [{}, {"num_words": 5, "relation": "at least"}]},
        {"key": 4, "prompt": "p4",
         "instruction_id_list": ["startend:end_checker", "detectable_content:postscript"],
         "kwargs": [{"end_phrase": "Any other questions?"}, {"postscript_marker": "P.S."}]},
        {"key": 5, "prompt": "p5", "instruction_id_list": ["detectable_format:number_highlighted_sections"],
         "kwargs": [{"num_highlights": 2}]},
    ]


def test_four_metrics_match_hand_computed_values():
    responses = {
        1: '"Hello world"',                       # strict [T, T]   loose [T, T]
        2: "Sure:\nthis is a simple lowercase english sentence about cats.",  # [F] / [T]
        3: "<<Dogs>> are nice",                   # [T, F] / [T, F]   (3 words < 5)
        4: "Hi there.\nP.S. bye\nAny other questions?\n*Note*",  # [F, T] / [T, T]
        5: "",                                    # [F] / [F]
    }
    res = ifeval.score_responses(_hand_prompts(), responses)
    assert res["metrics"] == {
        "prompt_level_strict_acc": 1 / 5,
        "inst_level_strict_acc": 4 / 8,
        "prompt_level_loose_acc": 3 / 5,
        "inst_level_loose_acc": 6 / 8,
    }
    assert res["counts"] == {"prompts": 5, "instructions": 8, "prompt_level_strict": 1,
                             "inst_level_strict": 4, "prompt_level_loose": 3, "inst_level_loose": 6}
    by_key = {r["key"]: r for r in res["per_prompt"]}
    assert by_key[4]["strict"] == [False, True] and by_key[4]["loose"] == [True, True]
    assert by_key[3]["failed_strict"] == ["length_constraints:number_words"]
    assert res["per_instruction"]["startend:end_checker"] == {"n": 1, "strict": 0.0, "loose": 1.0}
    json.dumps(res, allow_nan=False)
    assert res == ifeval.score_responses(_hand_prompts(), responses)  # deterministic


def test_score_responses_bad_input():
    prompts = _hand_prompts()
    full = {p["key"]: "x" for p in prompts}
    with pytest.raises(ValueError, match="no prompts"):
        ifeval.score_responses([], {})
    with pytest.raises(ValueError, match=r"1 prompt\(s\) without a response \(first keys \[5\]\)"):
        ifeval.score_responses(prompts, {k: v for k, v in full.items() if k != 5})
    with pytest.raises(ValueError, match="not among the prompts"):
        ifeval.score_responses(prompts, {**full, 99: "x"})
    with pytest.raises(ValueError, match="response for key 1 must be a str"):
        ifeval.score_responses(prompts, {**full, 1: None})
    with pytest.raises(ValueError, match="duplicate prompt keys"):
        ifeval.score_responses(prompts + prompts[:1], full)
    bad = dict(prompts[0], instruction_id_list=["nope:nothing"], kwargs=[{}])
    with pytest.raises(ValueError, match="unknown instruction id 'nope:nothing'"):
        ifeval.score_responses([bad], {1: "x"})
    bad = dict(prompts[2], kwargs=[{}, {"num_words": 5, "relation": "at most"}])
    with pytest.raises(ValueError, match="relation='at most'"):
        ifeval.score_responses([bad], {3: "x"})
    with pytest.raises(ValueError, match="missing \\['num_words'\\]"):
        registry.validate_kwargs("length_constraints:number_words", {"relation": "at least"})
    # None-valued arguments (Hugging Face copies list every name) are ignored
    assert registry.validate_kwargs("punctuation:no_comma", {"num_words": None}) == {}


def test_bundled_data_hash_and_shape():
    raw = DATA_PATH.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == DATA_SHA256
    prompts = load_prompts()
    assert len(prompts) == 541
    assert sum(len(p.instruction_id_list) for p in prompts) == 834
    assert len({p.key for p in prompts}) == 541
    assert {i for p in prompts for i in p.instruction_id_list} == set(ifeval.INSTRUCTION_IDS)


def test_modified_data_file_is_refused(tmp_path):
    copy = tmp_path / "input_data.jsonl"
    shutil.copyfile(DATA_PATH, copy)
    load_prompts(copy)  # byte-exact copy passes
    tampered = DATA_PATH.read_bytes().replace(b"300+ word summary", b"301+ word summary", 1)
    assert tampered != DATA_PATH.read_bytes()
    copy.write_bytes(tampered)
    with pytest.raises(ValueError, match="sha256"):
        load_prompts(copy)
    assert len(load_prompts(copy, expected_sha256=None)) == 541


def test_bad_data_file_errors_name_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"key": 1, "prompt": "x", "instruction_id_list": ["punctuation:no_comma"], '
                    '"kwargs": [{}]}\n{"key": 1}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"p.jsonl:2 has no field 'prompt'"):
        load_prompts(path, expected_sha256=None)


def test_whole_benchmark_scores_offline_and_deterministically():
    prompts = load_prompts()
    responses = {p.key: p.prompt for p in prompts}  # echo the prompt: a fixed, cheap response set
    first = ifeval.score_responses(prompts, responses)
    assert first == ifeval.score_responses(prompts, responses)
    m = first["metrics"]
    assert 0 < m["prompt_level_strict_acc"] <= m["prompt_level_loose_acc"] < 1
    assert m["inst_level_strict_acc"] <= m["inst_level_loose_acc"]
    assert first["counts"]["instructions"] == 834


def test_tokenization_known_cases():
    assert textutil.split_sentences("Mr. Smith went to Washington. He arrived at 5 p.m. on Monday! "
                                    "Did he? Yes.") == [
        "Mr. Smith went to Washington.", "He arrived at 5 p.m. on Monday!", "Did he?", "Yes."]
    assert textutil.count_sentences("") == 0
    assert textutil.word_tokenize('The U.S. is BIG. I said "HELLO-WORLD" to NASA.') == [
        "The", "U.S.", "is", "BIG", ".", "I", "said", "``", "HELLO-WORLD", "''", "to", "NASA", "."]
    assert textutil.count_words("don't stop-me now_please 3.5") == 7
    # stdlib \w: a Devanagari vowel sign is not a word character (see README)
    assert textutil.count_words("नमस्ते") == 2  # ["नमस", "त"]


def test_language_detection_is_seeded():
    text = "Ciao, come stai? Oggi il tempo è bello e andiamo al mare."
    assert {textutil.detect_language(text) for _ in range(5)} == {"it"}
    assert textutil.detect_language("12345 !!!") is None
