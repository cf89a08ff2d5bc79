"""The service's page at ``/`` in headless Chromium, served by a real uvicorn process: upload the
real DICOM fixture (and a phantom PNG) with age, sex and view, and see the probabilities, the
decisions, the heat map and the similar cases; a refusal is shown as the server's reason.
Screenshots go to pytest's ``tmp_path``, or to ``$CXR_SCREENSHOT_DIR`` when set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (test extra)")

from api_support import API_KEY, build_registry, phantom_png, server_env, uvicorn_args  # noqa: E402
from conftest import BackgroundProcess, free_port, wait_for_http  # noqa: E402

DICOM = Path(__file__).parent / "fixtures" / "dicom" / "siim_cxr.dcm"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    work = tmp_path_factory.mktemp("api-page")
    registry = build_registry(work)
    port = free_port()
    process = BackgroundProcess(uvicorn_args(port), server_env(registry), work / "server.log").start()
    try:
        wait_for_http(f"http://127.0.0.1:{port}/readyz", 120, process.process)
        yield f"http://127.0.0.1:{port}/", work
    finally:
        process.stop()


def _submit(driver, url: str, image: Path, key: str = API_KEY, age: str = "", sex: str = "", view: str = "") -> None:
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver.get_log("browser")
    driver.get(url)
    driver.find_element("id", "api-key").send_keys(key)
    driver.find_element("id", "image").send_keys(str(image.resolve()))
    if age:
        driver.find_element("id", "age").send_keys(age)
    if sex:
        Select(driver.find_element("id", "sex")).select_by_visible_text(sex)
    if view:
        Select(driver.find_element("id", "view")).select_by_visible_text(view)
    driver.find_element("id", "submit").click()
    WebDriverWait(driver, 120).until(lambda d: d.find_element("id", "status").text not in ("", "Scoring..."))


def test_page_scores_the_real_dicom_fixture(browser, page_url, tmp_path):
    url, _ = page_url
    shots = Path(os.environ.get("CXR_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    _submit(browser, url, DICOM, age="30", sex="F", view="AP")
    assert browser.find_element("id", "status").text.startswith("Scored in"), browser.find_element("id", "status").text
    assert browser.find_element("id", "result").is_displayed()
    rows = browser.find_elements("css selector", "#findings-table tbody tr")
    assert len(rows) == 14
    probabilities = [float(r.find_elements("tag name", "td")[1].text) for r in rows]
    assert probabilities == sorted(probabilities, reverse=True)
    for row in rows:
        p, threshold, decision = (c.text for c in row.find_elements("tag name", "td")[1:])
        if abs(float(p) - float(threshold)) > 0.001:  # the page rounds to 3 decimals
            assert decision == ("positive" if float(p) >= float(threshold) else "negative")
        assert ("positive" in (row.get_attribute("class") or "")) == (decision == "positive")
    heat = browser.execute_script(
        "const i = document.getElementById('heatmap'); return [i.complete, i.naturalWidth, i.naturalHeight];"
    )
    assert heat[0] and heat[1] >= 224 and heat[2] >= 224
    assert browser.find_element("id", "heatmap-caption").text.startswith("Grad-CAM: ")
    similar = browser.find_elements("css selector", "#similar-table tbody tr")
    assert len(similar) == 3 and similar[0].find_elements("tag name", "td")[0].text.endswith("_000.png")
    assert "sha256-" in browser.find_element("id", "summary").text
    assert [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"] == []
    shot = shots / "api_page_dicom.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 20_000


def test_page_shows_the_reason_of_a_refusal(browser, page_url):
    url, work = page_url
    png = phantom_png(work / "page.png", seed=11)
    _submit(browser, url, png, key="wrong-key", age="50")
    assert browser.find_element("id", "status").text == "Refused (401): invalid API key"
    assert not browser.find_element("id", "result").is_displayed()
    _submit(browser, url, png)  # no age, sex or view
    assert browser.find_element("id", "status").text.startswith("Refused (422): missing metadata")
