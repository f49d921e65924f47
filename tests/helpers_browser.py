"""Headless Chromium checks of a static HTML page (the run report): a screenshot, and whether
every image decoded. Used by tests/unit/test_report.py and tests/integration/test_report_sft.py.

Needs Debian's ``chromium`` (``bash setup.sh test`` installs it when it is missing and the setup
runs as root); `chromium_or_skip()` skips the calling test, naming the reason, when it is absent.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

SECTIONS = ("summary", "timeline", "steps", "training", "evaluation", "gates", "costs", "provenance")


def chromium_or_skip() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless Chromium on this machine (Debian: apt-get install -y chromium; "
                "`bash setup.sh test` does it when run as root)")


def _chromium(browser: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--no-first-run", "--disable-dev-shm-usage", *args],
                          capture_output=True, text=True, timeout=timeout)


class PageFacts(HTMLParser):
    """Section ids, image sources and every URL-bearing attribute of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.imgs: list[str] = []
        self.urls: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):  # noqa: ANN001
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "section" and a.get("id"):
            self.ids.append(a["id"])
        if tag == "img":
            self.imgs.append(a.get("src") or "")
        for k in ("src", "href"):
            if a.get(k):
                self.urls.append(a[k])


def parse(html: str) -> PageFacts:
    p = PageFacts()
    p.feed(html)
    p.close()
    return p


def assert_self_contained(html: str) -> PageFacts:
    """Parses; has every section; images are data URIs; nothing points at the network."""
    facts = parse(html)
    missing = [s for s in SECTIONS if s not in facts.ids]
    assert not missing, f"report lacks section(s) {missing}; has {facts.ids}"
    assert facts.imgs, "the report has no image at all"
    assert all(src.startswith("data:image/png;base64,") for src in facts.imgs), "an image is not inline"
    remote = [u for u in facts.urls if re.match(r"^(https?:)?//", u)]
    assert not remote, f"the report points at the network: {remote[:3]}"
    assert "script" not in facts.tags and "link" not in facts.tags
    return facts


def screenshot_and_image_check(html_path: Path, tmp: Path) -> dict:
    """Render the page in headless Chromium. Returns {"png": Path, "nonwhite": fraction of
    pixels that are not background, "images": {"total", "loaded"}} where ``loaded`` counts
    <img> elements the browser decoded (naturalWidth > 0), found by a probe script added to a
    copy of the page (the report itself has no script)."""
    browser = chromium_or_skip()
    png = tmp / "shot.png"
    r = _chromium(browser, "--window-size=1200,2000", f"--screenshot={png}", html_path.resolve().as_uri())
    assert png.is_file(), f"chromium wrote no screenshot: {r.stderr[-2000:]}"
    probe = tmp / "probe.html"
    script = ("<script>window.addEventListener('load',function(){var i=[].slice.call(document.images);"
              "document.title=JSON.stringify({total:i.length,loaded:i.filter(function(x){return x.complete&&"
              "x.naturalWidth>0}).length});});</script>")
    probe.write_text(html_path.read_text(encoding="utf-8").replace("</body>", script + "</body>"), encoding="utf-8")
    r = _chromium(browser, "--virtual-time-budget=10000", "--dump-dom", probe.resolve().as_uri())
    m = re.search(r"<title>(\{.*?\})</title>", r.stdout)
    assert m, f"the probe found no image counts; chromium said: {r.stderr[-1500:]}"
    import matplotlib.image as mpimg
    import numpy as np
    px = mpimg.imread(str(png))[..., :3]
    nonwhite = float((np.abs(px - px[0, 0]).sum(axis=-1) > 0.1).mean())
    return {"png": png, "nonwhite": nonwhite, "images": json.loads(m.group(1).replace("&quot;", '"'))}
