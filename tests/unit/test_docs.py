"""The docs stay true: the CLI reference is generated from --help and every command is in it."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cli_reference_is_current():
    r = subprocess.run([sys.executable, "-m", "runner.docgen", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_every_command_documented_with_example():
    from runner.cli import build_parser
    import argparse
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    doc = (ROOT / "docs" / "cli.md").read_text()
    for name, sp in sub.choices.items():
        assert f"## runner {name}" in doc, name
        assert "example:" in (sp.epilog or ""), f"`runner {name}` help has no example"


def test_readme_has_exactly_two_quickstart_commands_and_ci_uses_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert readme.count("<!-- main-command -->") == 1
    assert readme.count("<!-- test-command -->") == 1
    ci = (ROOT / ".ci" / "run").read_text()
    assert "test-command" in ci
