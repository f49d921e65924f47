"""Demo-only overrides stay honest: a not-enforced critic verdict does not filter but QC still
counts it by its real class; a failed QC blocks training unless require_qc_pass is false."""
from __future__ import annotations

import json

import pytest

from phases.qc import compute_qc, is_kept, verdict_class
from runner.errors import DataError

BAD = {"is_good": False, "label": "B", "confident": False, "margin": 0.2}


def _rec(verdict):
    return {"instruction": "Name a colour.", "response": "Blue.", "raw_completion": "Blue.###END###",
            "raw_tokens": 3, "cleaned_tokens": 2, "hit_token_limit": False, "marker_found": True,
            "heuristic_cut": None, "instruction_verdict": verdict, "pair_verdict": verdict}


def test_not_enforced_verdict_keeps_but_qc_counts_it_as_it_was():
    assert not is_kept(_rec(BAD))
    rec = _rec({**BAD, "not_enforced": True, "keep": True})
    assert is_kept(rec)
    assert verdict_class(rec["pair_verdict"]) == "low_confidence"
    qc = compute_qc([rec])
    assert qc["acceptance"]["pair"]["rate"] == 0.0 and not qc["thresholds_passed"]


def test_failed_qc_blocks_training_unless_overridden(tmp_path):
    from phases.sft import check_merge_inputs
    (tmp_path / "qc_summary.json").write_text(json.dumps({"thresholds_passed": False, "failed_reasons": ["x"]}))
    (tmp_path / "manifest.json").write_text(json.dumps({"created_at": 1, "git_sha": "a", "model": "m",
                                                         "counts": {}, "files": {}}))
    (tmp_path / "sft.jsonl").write_text('{"instruction": "a", "response": "b"}\n')
    with pytest.raises(DataError, match="thresholds_passed"):
        check_merge_inputs(tmp_path)
    assert check_merge_inputs(tmp_path, require_qc_pass=False)["qc"]["thresholds_passed"] is False
