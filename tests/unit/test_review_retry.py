"""A failed review is not memoized: a plain `runner resume` asks the reviewer again.

A failed review (no verdict: garbage, network errors) decided nothing, so serving it again from
the memo would only keep the gate waiting on a stale failure. A review with a verdict stays
memoized (tests/unit/test_gate_review.py checks that a resume never re-asks it).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from review_server import FakeReviewServer, text_reply, verdict_reply  # noqa: E402
from test_gate_review import home, reviews, run, write_cfg  # noqa: E402,F401


def test_plain_resume_retries_a_failed_review(home, tmp_path):  # noqa: F811
    garbage = text_reply("I think it is probably fine?")
    with FakeReviewServer(default=garbage) as srv:
        cfg = write_cfg(tmp_path, srv.base_url, "review")
        assert run(home, "run", "--config", str(cfg)) == 3     # failed closed: waits
        asked = srv.count
        assert asked >= 1 and reviews(home)[0][1] == 0
        srv.default = verdict_reply("GO", summary="fine now")  # the reviewer works again
        assert run(home, "resume") == 0                        # asked again, GO this time
        assert srv.count > asked
    rows = reviews(home)
    assert [r[1] for r in rows] == [0, 1] and rows[-1][2] == "GO"


def test_a_verdict_is_still_memoized_after_a_failed_review(home, tmp_path):  # noqa: F811
    garbage = text_reply("no idea")
    with FakeReviewServer(default=garbage) as srv:
        cfg = write_cfg(tmp_path, srv.base_url, "review")
        assert run(home, "run", "--config", str(cfg)) == 3
        srv.default = verdict_reply("NO-GO", summary="bad")
        assert run(home, "resume") == 3                        # re-asked: NO-GO recorded
        n = srv.count
        assert run(home, "resume") == 3                        # the verdict is memoized
        assert srv.count == n
    assert [r[2] for r in reviews(home)] == [None, "NO-GO"]
