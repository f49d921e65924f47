"""Offline, deterministic text primitives used by the IFEval checkers.

Library module (no command). Tested by: .venv/bin/pytest tests/unit/test_ifeval.py -q

- ``count_words``: number of ``\\w+`` runs (the reference's ``RegexpTokenizer(r"\\w+")``).
- ``split_sentences`` / ``count_sentences``: NLTK's Punkt sentence tokenizer with the English
  model, whose parameters are vendored in ``nltk_data/punkt_tab/english/`` (NLTK cannot
  download here) and loaded directly from those files: ``nltk.data.path`` is never touched
  and ``nltk.download`` is never called. The model files are sha256-checked at first use.
- ``word_tokenize``: what ``nltk.word_tokenize(text)`` does (Punkt sentences, then NLTK's
  improved Treebank word tokenizer on each), with the vendored model.
- ``detect_language``: langdetect with a private ``DetectorFactory`` seeded with 0, so the
  answer is the same on every call and machine (unseeded langdetect is random) and the global
  langdetect factory is left alone. Returns ``None`` when langdetect finds no features
  (for example digits only); the reference treats that as "instruction followed".

Only nltk (the algorithms, no data) and langdetect are needed; both are imported lazily.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import defaultdict
from pathlib import Path

PUNKT_DIR = Path(__file__).resolve().parent / "nltk_data" / "punkt_tab" / "english"

#: sha256 of the vendored Punkt English model files (NLTK punkt_tab, MIT licence).
PUNKT_SHA256 = {
    "abbrev_types.txt": "92a3e070f43d9b4c5534758ca40ad7343b04e7e29bfe0c2eb658a39445a4f779",
    "collocations.tab": "8e2da1225e4dd2cc9dba261ee231ccb134859e21b46006e7f472c5ee269af0cf",
    "ortho_context.tab": "4bbcca25ed3d3f06c02402abf8419b9f033b8adc06e7b482eca4e45f81a5dc4c",
    "sent_starters.txt": "f3f8535483e1dba487241b764945168123bca3209a9645e59acd1225dc76edac",
}

LANGDETECT_SEED = 0

_WORD_RE = re.compile(r"\w+")


def count_words(text: str) -> int:
    """Number of maximal ``\\w+`` runs (Unicode word characters); "don't" counts as 2."""
    return len(_WORD_RE.findall(text))


def _read_model_file(name: str) -> list[str]:
    path = PUNKT_DIR / name
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RuntimeError(
            f"IFEval: Punkt model file {path} is missing ({exc}); restore phases/ifeval/nltk_data "
            "from git") from exc
    digest = hashlib.sha256(raw).hexdigest()
    if digest != PUNKT_SHA256[name]:
        raise RuntimeError(
            f"IFEval: Punkt model file {path} has sha256 {digest}, expected {PUNKT_SHA256[name]}; "
            "the vendored file was modified: restore it from git")
    # Same parsing as nltk.tabdata.PunktDecoder: one entry per line, tab-separated fields.
    return [line[:-1] if line.endswith("\n") else line
            for line in raw.decode("utf-8").splitlines(keepends=True)]


@functools.lru_cache(maxsize=1)
def _sentence_tokenizer():
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    params = PunktParameters()
    params.abbrev_types = set(_read_model_file("abbrev_types.txt"))
    params.collocations = {tuple(line.split("\t")) for line in _read_model_file("collocations.tab")}
    params.sent_starters = set(_read_model_file("sent_starters.txt"))
    ortho = defaultdict(int)
    for line in _read_model_file("ortho_context.tab"):
        word, flags = line.split("\t")
        ortho[word] = int(flags)
    params.ortho_context = ortho
    tokenizer = PunktSentenceTokenizer()
    tokenizer._params = params  # what nltk's own PunktTokenizer.load_lang does
    return tokenizer


@functools.lru_cache(maxsize=1)
def _word_tokenizer():
    from nltk.tokenize.destructive import NLTKWordTokenizer

    return NLTKWordTokenizer()


def split_sentences(text: str) -> list[str]:
    """Punkt (English) sentences of ``text``; ``[]`` for empty/whitespace-only text."""
    return _sentence_tokenizer().tokenize(text)


def count_sentences(text: str) -> int:
    """Number of Punkt (English) sentences, as the reference ``count_sentences``."""
    return len(split_sentences(text))


def word_tokenize(text: str) -> list[str]:
    """Equivalent of ``nltk.word_tokenize(text)`` (English, preserve_line=False)."""
    tok = _word_tokenizer()
    return [token for sentence in split_sentences(text) for token in tok.tokenize(sentence)]


@functools.lru_cache(maxsize=1)
def _language_factory():
    from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

    factory = DetectorFactory()
    factory.load_profile(PROFILES_DIRECTORY)
    factory.set_seed(LANGDETECT_SEED)  # instance attribute: the global factory is untouched
    return factory


def detect_language(text: str) -> str | None:
    """ISO 639-1 code that langdetect (seed 0) gives ``text``, or None if it cannot tell."""
    from langdetect.lang_detect_exception import LangDetectException

    detector = _language_factory().create()
    detector.append(text)
    try:
        return detector.detect()
    except LangDetectException:
        return None
