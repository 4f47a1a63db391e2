"""report.html as a reader sees it: a report that the test itself just wrote (`write_report` over a
sweep logged into a fresh MLflow store with hand-made histories and figures: no training), opened in
headless Chromium (Debian's, through playwright; playwright's own browsers are not needed). Skips where
Chromium or playwright is missing."""
import contextlib
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, missing
from fake_runs import PLATEAU, STUCK, axis_params, log_sweep

from harness.config import load_config
from harness.report import write_report

CHROMIUM = Path(os.environ.get("HARNESS_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 900}


# A verdict of each tone, and a failure reason with a `|` that must not cut its table cell.
HISTORIES = {"seed": STUCK, "no_featurewise": PLATEAU, "image_only": PLATEAU[:4] + [0.9, 0.6, 0.5, 0.45]}
VARIANTS_SET = 'variants=["seed","no_featurewise","image_only","tanh_posted"]'


def variants() -> list[str]:
    return list(HISTORIES)


@contextlib.contextmanager
def browser_launched():
    """Debian's headless Chromium through playwright (its own browser builds are not needed)."""
    if not CHROMIUM.is_file():
        missing(f"Chromium not found at {CHROMIUM} (Debian package chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not importable (pip install playwright; its bundled browsers are not needed)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def browser():
    with browser_launched() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A freshly written report: 3 variants with runs (converged, not_learning, degrading) and one
    crashed point whose reason holds a `|`."""
    folder = tmp_path_factory.mktemp("results")
    cfg = load_config(ROOT / "tests" / "data" / "tiny.toml", ["train.epochs=8", VARIANTS_SET])
    tracker = log_sweep(folder, cfg, HISTORIES, figures=True)
    crashed = tracker.start_point("tanh_posted", 1, {"variant": "tanh_posted", **axis_params(cfg, "tanh_posted")},
                                  tags={"optuna.study": cfg.study_name})
    tracker.set_tags(crashed, {"failure": "ValueError: shapes (2|3) differ", "verdict": "crashed"})
    tracker.end_point(crashed, "FAILED")
    write_report(cfg, folder, tracker.uri, "pytest")
    page = folder / cfg.report_name / "report.html"
    assert page.is_file()
    return page


def test_a_pipe_in_a_failure_reason_stays_in_its_cell(report):
    md = (report.parent / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| tanh_posted | 1 | FAILED"))
    assert row.endswith("| ValueError: shapes (2\\|3) differ |")
    assert "<td>ValueError: shapes (2|3) differ</td>" in report.read_text()


@contextlib.contextmanager
def open_report(browser, report: Path):
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


@pytest.fixture(scope="module")
def opened(browser, report):
    with open_report(browser, report) as seen:
        yield seen


def verdict_table(page) -> dict[str, str]:
    """The first table's verdict per variant, as the reader sees it; the table comes before any figure."""
    table = page.locator("table").first
    assert table.is_visible()
    assert page.evaluate("""() => {
        const table = document.querySelector('table'), img = document.querySelector('img');
        return !!img && !!(table.compareDocumentPosition(img) & Node.DOCUMENT_POSITION_FOLLOWING);
    }"""), "the verdict table must come before the first figure"
    header = [t.strip().lower() for t in table.locator("thead th").all_text_contents()]
    rows = table.locator("tbody tr")
    cells = [[c.strip() for c in rows.nth(i).locator("td").all_text_contents()] for i in range(rows.count())]
    return {row[header.index("variant")]: row[header.index("verdict")] for row in cells}


def assert_every_figure_shown(page, outside: list, count: int) -> list[str]:
    """`count` figures, each embedded, loaded, visible and of non-zero size; nothing fetched. -> alt texts."""
    images = page.locator("img")
    assert images.count() == count
    for i in range(count):
        img = images.nth(i)
        alt = img.get_attribute("alt")
        assert img.get_attribute("src").startswith("data:image/"), alt
        assert img.evaluate("i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0"), f"{alt} did not load"
        assert img.is_visible(), alt
        box = img.bounding_box()
        assert box and box["width"] > 0 and box["height"] > 0, alt
    assert not outside, f"the report must be self-contained, but it requested {outside}"
    return [images.nth(i).get_attribute("alt") or "" for i in range(count)]


def test_verdict_table_comes_first_with_one_row_per_variant(opened):
    page, _, _ = opened
    shown = verdict_table(page)
    assert list(shown) == variants() and all(shown.values()), shown
    # Wide tables scroll inside the page; the page itself never overflows sideways.
    assert page.evaluate("document.documentElement.scrollWidth") <= VIEWPORT["width"]


def test_every_figure_is_embedded_loaded_and_visible(opened):
    page, _, outside = opened
    alts = assert_every_figure_shown(page, outside, 2 + len(variants()))

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
