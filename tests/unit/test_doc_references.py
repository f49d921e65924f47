"""Every reference in the docs is real: repository paths, markdown links, `runner` subcommands,
`python -m` modules and `bash setup.sh` modes named in docs/, runbooks/ and README.md exist.

Run: .venv/bin/python -m pytest tests/unit/test_doc_references.py -q
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([*(ROOT / "docs").glob("*.md"), *(ROOT / "runbooks").glob("*.md"), ROOT / "README.md",
               *[p for p in (ROOT / "AGENTS.md", ROOT / "CLAUDE.md") if p.exists()]])
TOP = ("runner", "state", "phases", "docs", "runbooks", "tests", "benchmarks", "specs", "configs")
PATH_RE = re.compile(r"(?<![\w./$-])((?:%s)/[A-Za-z0-9_./-]*[A-Za-z0-9_/])" % "|".join(TOP))
LINK_RE = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
RUNNER_RE = re.compile(r"(?:^|[;&|(]\s*|\$\s+|bin/|=\S+\s+)runner((?:[ \t]+--(?:home|db-url)(?:[ \t]+|=)\S+)*)"
                       r"[ \t]+([a-z][a-z-]+)", re.M)
PYM_RE = re.compile(r"python3?\s+-m\s+([A-Za-z_][\w.]*)")
SETUP_RE = re.compile(r"bash setup\.sh\s+([a-z]+)")


def _code(text: str) -> str:
    """Only code: fenced blocks and inline code spans (prose may say 'the runner resumes')."""
    blocks = re.findall(r"```.*?```", text, flags=re.S)
    rest = re.sub(r"```.*?```", "", text, flags=re.S)
    return "\n".join(blocks + re.findall(r"`([^`\n]+)`", rest))  # one span per line: ^ anchors work


def _subcommands() -> set[str]:
    import argparse

    from runner.cli import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_paths_and_links_exist(doc):
    text = doc.read_text(encoding="utf-8")
    missing = []
    for m in PATH_RE.finditer(text):
        ref = m.group(1).split("::")[0].rstrip(".")
        after = text[m.end():m.end() + 1]
        if any(c in ref for c in "<>*{}") or after in ("*", "{", "<", "$"):
            continue  # a pattern (test_models_*.py, h100-run-<date>), not a path
        if not (ROOT / ref).exists():
            missing.append(ref)
    for m in LINK_RE.finditer(text):
        ref = m.group(1)
        if re.match(r"[a-z]+:", ref):
            continue  # http:, mailto:
        if not (doc.parent / ref).exists():
            missing.append(f"link {ref}")
    assert not missing, f"{doc.relative_to(ROOT)} names paths that do not exist: {sorted(set(missing))}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_commands_exist(doc):
    code = _code(doc.read_text(encoding="utf-8"))
    subs = _subcommands()
    usage = re.search(r"usage: bash setup\.sh \[([a-z|]+)\]", (ROOT / "setup.sh").read_text())
    setup_modes = set(usage.group(1).split("|"))
    bad = []
    for m in RUNNER_RE.finditer(code):
        if m.group(2) not in subs:
            bad.append(f"runner {m.group(2)}")
    for m in PYM_RE.finditer(code):
        mod = m.group(1)
        if mod in ("pip", "venv", "pytest", "cProfile", "json.tool"):
            continue
        if mod.split(".")[0] in ("runner", "state", "phases", "benchmarks") and importlib.util.find_spec(mod) is None:
            bad.append(f"python -m {mod}")
    for m in SETUP_RE.finditer(code):
        if m.group(1) not in setup_modes:
            bad.append(f"bash setup.sh {m.group(1)}")
    assert not bad, f"{doc.relative_to(ROOT)} names commands that do not exist: {sorted(set(bad))}"


def test_the_checker_catches_a_bad_reference(tmp_path):
    assert PATH_RE.search("see configs/pilot.yaml here").group(1) == "configs/pilot.yaml"
    assert not (ROOT / "configs/pilot.yaml").exists()
    m = RUNNER_RE.search(_code("run `runner --home /w frobnicate`"))
    assert m and m.group(2) == "frobnicate" and "frobnicate" not in _subcommands()
