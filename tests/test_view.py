"""`contrastgen view`: pages over the memory-mapped shards, and the page as a person sees it in a real browser
(headless Chromium from Debian's packages) against the session's real dataset."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pipeline.records import meaning
from pipeline.view import build_app
from pipeline.view.data import Dataset, Query
from tests.conftest import start_server

pytestmark = pytest.mark.integration


def test_pages_cover_every_row_once_and_filters_hold(negatives_run):
    cfg, summary = negatives_run
    ds = Dataset(cfg.output.dir)
    seen = []
    for page in range(100):
        pg = ds.page(Query(split="train", page=page, size=3))
        seen += [r["id"] for r in pg.rows]
        if page + 1 >= pg.pages:
            break
    assert len(seen) == len(set(seen)) == pg.total == summary["splits"]["train"]
    kind = ds.values("train", "type")[0]
    typed = ds.page(Query(split="train", type=kind, size=200))
    assert typed.total > 0 and {r["type"] for r in typed.rows} == {kind}
    word = typed.rows[0]["anchor"].split()[1].upper()  # search ignores case
    found = ds.page(Query(split="train", q=word, size=200))
    assert found.total > 0 and all(
        any(word.lower() in (r[c] or "").lower() for c in ("anchor", "positive", "negative")) for r in found.rows
    )
    rejected = ds.page(Query(split="rejected", reason="empty_caption", size=200))
    assert rejected.total >= 1 and all(r["reason"] == "empty_caption" for r in rejected.rows)


def test_texts_are_escaped_and_bad_requests_named(negatives_run):
    c = TestClient(build_app(negatives_run[0].output.dir))
    page = c.get("/rows", params={"q": "<script>alert(1)</script>"})
    assert page.status_code == 200 and "<script>alert" not in page.text and "&lt;script&gt;alert(1)" in page.text
    bad = c.get("/rows", params={"split": "nope"})
    assert bad.status_code == 404 and "expected one of" in bad.json()["detail"]
    assert c.get("/plots/../manifest.json").status_code == 404


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, (
        "expected Debian's chromium on PATH for the browser test. Fix: `apt-get install -y chromium` (make browser)"
    )
    return exe


def _browser(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_browser_sees_moved_words_and_rejection_reasons(negatives_run, tmp_path):
    root = negatives_run[0].output.dir
    ds = Dataset(root)
    swap = next(r for t in ("swap_obj", "swap_att") for r in ds.page(Query(split="train", type=t, size=200)).rows)
    cli = str(Path(sys.executable).parent / "contrastgen")
    proc, base = start_server(
        lambda port: [cli, "view", str(root), "--port", str(port)], tmp_path / "view.log", root="", probe="/"
    )
    try:
        dom = _browser("--dump-dom", f"{base}/rows?type={swap['type']}").stdout
        block = re.search(rf'<div class="row" id="{swap["id"]}">(.*?)</div>\s*</div>', dom, re.S)
        assert block, dom[-2000:]
        moved = re.findall(r'<span class="moved">([^<]+)</span>', block.group(1))
        # the swapped words are marked moved on both lines, and they are words of the anchor
        assert len(moved) >= 4 and all(w.strip(".,").lower() in swap["anchor"].lower() for w in moved), block.group(1)
        dom = _browser("--dump-dom", f"{base}/rejected?reason=empty_caption").stdout
        # the reason code, with its meaning (from the registry the card reads) as a tooltip
        chip = f'<span class="reason" title="{meaning("empty_caption")}">empty_caption</span>'
        assert chip in dom and "1 rows match" in dom
        shot = tmp_path / "rows.png"
        _browser(f"--screenshot={shot}", "--window-size=1200,900", f"{base}/rows")
        assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    finally:
        proc.terminate()
        proc.wait(30)
