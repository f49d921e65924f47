"""Concurrent processes preparing the same cached model build it once and never pull it from under
a reader (the likely cause of tests/crash/test_sft_resume.py's failure under load, issue 18).

Before the fix, every process that found no marker built the tiny model, and each later one
``rmtree``'d the folder an earlier one had published (and that a runner may be loading from)
before renaming its own into place: a concurrent loader saw files vanish and its step failed.

Run: .venv/bin/pytest -m integration tests/integration/test_model_cache_race.py -q   (~30 s)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, os, sys, time
from pathlib import Path
root, go, me = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
from phases.models import embedded  # imports done before the start line
from safetensors import safe_open
from transformers import AutoTokenizer
while not go.exists():
    time.sleep(0.01)
path = embedded.prepare("tiny-random-qwen2", root)
inodes = [os.stat(path).st_ino]
for _ in range(3):  # keep reading while the others may still be building
    AutoTokenizer.from_pretrained(str(path))
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        assert len(list(f.keys())) > 0
    inodes.append(os.stat(path).st_ino)
print(json.dumps({"me": me, "inodes": inodes}))
"""


def test_concurrent_prepares_build_once_and_readers_never_lose_files(tmp_path):
    root, go = tmp_path / "cache", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(root), str(go), str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    go.write_text("go")  # each child starts building as soon as its imports are done
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    seen = {ino for out, _ in outs for ino in json.loads(out.strip().splitlines()[-1])["inodes"]}
    assert len(seen) == 1, f"the cached folder was replaced while in use (inodes {sorted(seen)})"
    assert len([p for p in root.iterdir() if not p.name.startswith(".")]) == 1
    assert not [p for p in root.iterdir() if ".tmp-" in p.name], "a temp build dir was left behind"
