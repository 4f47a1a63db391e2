"""report.html as a reader sees it: rendered by `render_html` from the committed whitening report.md and
opened in headless Chromium (Debian's, through playwright; playwright's own browsers are not needed).
No training: the committed results/whitening figures are embedded. Skips where Chromium or playwright
is missing."""
import csv
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from harness.report import render_html

WHITENING = ROOT / "results" / "whitening"
CHROMIUM = Path(os.environ.get("HARNESS_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 900}


def variants() -> list[str]:
    with open(WHITENING / "summary.csv") as f:
        return [row["variant"] for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"Chromium not found at {CHROMIUM} (Debian package chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not importable (pip install playwright; its bundled browsers are not needed)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    md = WHITENING / "report.md"
    assert md.is_file(), f"the committed report is missing: {md}"
    page = tmp_path_factory.mktemp("report") / "report.html"
    page.write_text(render_html(md.read_text(), WHITENING))
    return page


@pytest.fixture(scope="module")
def opened(browser, report):
    """The page after load, with what it logged and every request that left file:// or data:."""
    page = browser.new_page(viewport=VIEWPORT)
    errors, outside = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
    try:
        page.goto(report.as_uri(), wait_until="load")
        page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=10_000)
        yield page, errors, outside
    finally:
        page.close()


def test_verdict_table_comes_first_with_one_row_per_variant(opened):
    page, _, _ = opened
    table = page.locator("table").first
    assert table.is_visible()
    assert page.evaluate("""() => {
        const table = document.querySelector('table'), img = document.querySelector('img');
        return !!img && !!(table.compareDocumentPosition(img) & Node.DOCUMENT_POSITION_FOLLOWING);
    }"""), "the verdict table must come before the first figure"
    header = [t.strip().lower() for t in table.locator("thead th").all_text_contents()]
    assert "variant" in header and "verdict" in header, header
    rows = table.locator("tbody tr")
    assert [rows.nth(i).locator("td").first.text_content().strip() for i in range(rows.count())] == variants()
    verdict = header.index("verdict")
    assert all(rows.nth(i).locator("td").nth(verdict).text_content().strip() for i in range(rows.count()))
    # Wide tables scroll inside the page; the page itself never overflows sideways.
    assert page.evaluate("document.documentElement.scrollWidth") <= VIEWPORT["width"]


def test_every_figure_is_embedded_loaded_and_visible(opened):
    page, _, outside = opened
    images = page.locator("img")
    assert images.count() >= 2 + len(variants())
    for i in range(images.count()):
        img = images.nth(i)
        alt = img.get_attribute("alt")
        assert img.get_attribute("src").startswith("data:image/"), alt
        assert img.evaluate("i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0"), f"{alt} did not load"
        assert img.is_visible(), alt
        box = img.bounding_box()
        assert box and box["width"] > 0 and box["height"] > 0, alt
    assert not outside, f"the report must be self-contained, but it requested {outside}"

    alts = [images.nth(i).get_attribute("alt") or "" for i in range(images.count())]

    def first(pattern: str) -> int:
        found = [i for i, alt in enumerate(alts) if re.search(pattern, alt, re.IGNORECASE)]
        assert found, f"no figure whose alt text matches {pattern!r} among {alts}"
        return found[0]

    loss, miou = first(r"loss"), first(r"iou")
    predictions = [first(rf"^predictions?[ _:-]+{re.escape(v)}(\.png)?$") for v in variants()]
    assert loss < miou < min(predictions), f"figures out of order (loss curves, mIoU, predictions): {alts}"


def test_no_console_errors_and_the_page_is_not_blank(opened):
    page, errors, _ = opened
    assert not errors, errors
    from PIL import Image

    shot = np.asarray(Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("L"))
    assert shot.shape[0] > VIEWPORT["height"]          # the page is longer than one screen
    ink = (shot < 200).mean()
    assert ink > 0.02 and shot.std() > 10, f"screenshot looks blank (ink {ink:.3f}, std {shot.std():.1f})"
