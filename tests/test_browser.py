"""Every report in a real headless browser (Chromium through Selenium): it loads without console
errors, every image decodes, a screenshot is saved, and the print stylesheet applies.

Skipped, with the reason, when Selenium, Chromium or chromedriver is missing (CI installs
Debian's ``chromium`` and ``chromium-driver``). Screenshots go to pytest's ``tmp_path``, or to
``$CXR_SCREENSHOT_DIR`` when that is set (to look at them).
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import pytest

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (test extra)")

from report_contexts import full_context, make_context, scoring_context  # noqa: E402
from test_dataset_report import make_context as dataset_context  # noqa: E402

from reports import (  # noqa: E402
    DISCLAIMER,
    DatasetContext,
    EvaluationContext,
    ScoringContext,
    render_dataset_report,
    render_evaluation_report,
    render_scoring_report,
)

MIN_SCREENSHOT_BYTES = 20_000  # a blank or error page is a few kB
A4_CONTENT_PX = 703  # (210 - 2 x 12) mm at 96 CSS px per inch: the width the print stylesheet must fit


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("CXR_SCREENSHOT_DIR") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _open(driver, path: Path) -> None:
    driver.get_log("browser")  # drop what earlier pages logged
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})
    driver.get(path.resolve().as_uri())
    driver.execute_async_script(  # wait until every image has loaded or failed
        "const done = arguments[arguments.length - 1];"
        "Promise.all(Array.from(document.images).map(i => i.complete ? null :"
        " new Promise(r => { i.onload = i.onerror = r; }))).then(() => done(true));"
    )


def _check_page(driver, path: Path, shots: Path, name: str, expected_images: int) -> None:
    _open(driver, path)
    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert severe == [], f"console errors in {name}: {severe}"
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt])"
    )
    assert len(images) == expected_images
    broken = [alt for complete, width, height, alt in images if not (complete and width > 0 and height > 0)]
    assert broken == [], f"images that did not decode in {name}: {broken}"
    assert DISCLAIMER in driver.find_element("tag name", "body").text

    # no table spills out of its box over its neighbours (a scrolling wrapper may hold a wide one)
    spilled = driver.execute_script(
        "return Array.from(document.querySelectorAll('table'))"
        ".filter(t => getComputedStyle(t.parentElement).overflowX === 'visible'"
        " && t.getBoundingClientRect().right > t.parentElement.getBoundingClientRect().right + 1)"
        ".map(t => [t.closest('[id]')?.id, Math.round(t.getBoundingClientRect().width),"
        " Math.round(t.parentElement.getBoundingClientRect().width)]);"
    )
    assert spilled == [], f"tables wider than their box in {name}: {spilled}"

    height = driver.execute_script("return document.documentElement.scrollHeight")
    assert height > 1000, "the page should have real content"
    shot = shots / f"{name}.png"
    assert driver.save_screenshot(str(shot))
    assert shot.stat().st_size > MIN_SCREENSHOT_BYTES
    full = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": 1280, "height": min(height, 16000), "scale": 0.5},
        },
    )
    full_path = shots / f"{name}_full.png"
    full_path.write_bytes(base64.b64decode(full["data"]))
    assert full_path.stat().st_size > MIN_SCREENSHOT_BYTES


def _check_print(driver, shots: Path, name: str) -> None:
    """Print emulation: header cells lose their dark fill, navigation is hidden, and the page
    prints to a multi-page A4 PDF."""
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    style = driver.execute_script(
        "const th = document.querySelector('thead th'); const nav = document.querySelector('nav.toc');"
        "return [getComputedStyle(th).backgroundColor, getComputedStyle(th).color,"
        " nav ? getComputedStyle(nav).display : 'none'];"
    )
    assert style[0] in ("rgb(255, 255, 255)", "rgba(0, 0, 0, 0)"), f"dark header fill in print: {style[0]}"
    assert style[2] == "none"
    # at the printable width of A4 portrait (210 mm - 2 x 12 mm margins = 703 CSS px) no table is cut off
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": A4_CONTENT_PX, "height": 1000, "deviceScaleFactor": 1, "mobile": False}
    )
    try:
        too_wide = driver.execute_script(
            "const w = document.documentElement.clientWidth;"
            "return Array.from(document.querySelectorAll('table'))"
            ".filter(t => t.getBoundingClientRect().right > w + 1).map(t => [t.id, Math.round(t.scrollWidth)]);"
        )
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert too_wide == [], f"tables wider than an A4 page in {name}: {too_wide}"
    pdf = driver.execute_cdp_cmd("Page.printToPDF", {"printBackground": True, "preferCSSPageSize": True})
    data = base64.b64decode(pdf["data"])
    assert data.startswith(b"%PDF")
    (shots / f"{name}.pdf").write_bytes(data)
    assert len(re.findall(rb"/Type\s*/Page[^s]", data)) > 1, "expected several printed pages"
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})


def test_evaluation_report_in_browser(browser, tmp_path, shots):
    ctx = full_context(n_examples=2)
    path = render_evaluation_report(EvaluationContext(**ctx), tmp_path / "evaluation.html")
    # confusion, ROC x2, PR x2, reliability, training, map; 2 examples x (image + Grad-CAM)
    _check_page(browser, path, shots, "evaluation", 8 + 2 * 2)
    # the subgroup warning and the per-class intervals are visible, not just present
    assert browser.find_element("id", "subgroup-warning").is_displayed()
    assert "–" in browser.find_element("id", "per-class-table").text
    _check_print(browser, shots, "evaluation")


def test_evaluation_report_of_a_baseline_in_browser(browser, tmp_path, shots):
    ctx = make_context(examples=1)  # no intervals, calibration, subgroups, map or heat maps
    path = render_evaluation_report(EvaluationContext(**ctx), tmp_path / "baseline.html")
    _check_page(browser, path, shots, "evaluation_baseline", 7 + 1)
    for missing in ("no-intervals", "no-calibration", "no-subgroups", "no-embedding-map"):
        assert browser.find_element("id", missing).is_displayed()


def test_scoring_report_in_browser(browser, tmp_path, shots):
    ctx = scoring_context()
    ctx["run"]["n_scored"] = 1000
    ctx["top_studies"]["Effusion"] = [("00000001_000", 0.97, [("00000009_000", 0.93, "Effusion|Mass")]), ("00000002_000", 0.93)]
    # real key and finding lengths, in every column of the grid: nothing may spill into the next
    similar = [("00000822_005.png", 0.97, "Atelectasis|Effusion|Infiltration|Pleural_Thickening")] * 3
    for finding in ("Atelectasis", "Cardiomegaly", "Infiltration", "Pleural_Thickening"):
        ctx["top_studies"][finding] = [("90000015_000.dcm", 0.991, similar), ("90000023_001.dcm", 0.912, similar)]
    path = render_scoring_report(ScoringContext(**ctx), tmp_path / "scoring.html")
    _check_page(browser, path, shots, "scoring", 1)
    assert browser.find_element("id", "drift-warning").is_displayed()
    _check_print(browser, shots, "scoring")


def test_dataset_report_in_browser(browser, tmp_path, shots):
    ctx = dataset_context(n_quarantined_extra=3)
    path = render_dataset_report(DatasetContext(**ctx), tmp_path / "dataset.html")
    n_images = path.read_text(encoding="utf-8").count("<img ")
    assert n_images >= 4
    _check_page(browser, path, shots, "dataset", n_images)
    _check_print(browser, shots, "dataset")


def test_per_class_and_comparison_tables_show_every_column_at_1400_px(browser, tmp_path, shots):
    """At a 1400 px window neither wide table scrolls sideways, with the small-sample and
    below-chance flags in the per-class table and long version names in the comparison."""
    ctx = full_context(n_examples=0)
    for r in ctx["per_class"][:4]:
        r["n_positive"] = 3
    ctx["per_class"][5].update(auroc=0.31, auroc_ci_low=0.2, auroc_ci_high=0.45)
    ctx["comparison"][0].update(
        name="mlp_embedding-of-densenet121_fpn-20250101T120000123456", selection_score=0.81, selection_basis="cross_validation"
    )
    ctx["comparison"][1].update(
        name="pixel_logistic-20250101T120000654321", selection_score=0.7, selection_basis="validation", macro_auroc_ci_high=0.45
    )
    path = render_evaluation_report(EvaluationContext(**ctx), tmp_path / "wide.html")
    _open(browser, path)
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": False}
    )
    try:
        widths = browser.execute_script(
            "return ['per-class-table', 'comparison-table'].map(id => { const t = document.getElementById(id);"
            " return [id, Math.round(t.parentElement.scrollWidth), Math.round(t.parentElement.clientWidth),"
            " Math.round(t.getBoundingClientRect().right), document.documentElement.clientWidth]; });"
        )
        browser.find_element("id", "per-class-table").screenshot(str(shots / "per_class_1400.png"))
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    for table, scroll, client, right, page in widths:
        assert scroll <= client + 1 and right <= page, f"{table} overflows at 1400 px: {scroll} > {client}"
    assert len(browser.find_elements("css selector", "#per-class-table .small-sample")) == 8  # 4 findings x 2 intervals
