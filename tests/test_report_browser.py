"""The HTML report in a real headless browser (Debian's chromium driven by Playwright): every
table and image renders, nothing logs an error, and names that carry HTML run no script.

Skips, saying why, where Playwright or a chromium binary is missing; `.ci/run` installs both."""

from __future__ import annotations

import shutil

import pytest

from conftest import HOSTILE

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def open_watched(browser, load) -> tuple[object, dict]:
    """A page whose dialogs, console errors and script errors are recorded while `load(page)` runs."""
    page = browser.new_page()
    seen = {"dialogs": [], "errors": []}
    page.on("dialog", lambda dialog: (seen["dialogs"].append(dialog.message), dialog.dismiss()))
    page.on("console", lambda message: seen["errors"].append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: seen["errors"].append(str(error)))
    load(page)
    page.wait_for_load_state("load")
    return page, seen


def test_the_watch_sees_a_script_that_runs(browser):
    """Positive control: the same watch does notice a dialog and an error when script runs."""
    page, seen = open_watched(browser, lambda p: p.set_content("<script>alert(1); undefinedCall()</script>"))
    assert seen["dialogs"] == ["1"] and seen["errors"]
    page.close()


def test_the_report_renders_and_runs_no_injected_script(browser, hostile_run):
    html = hostile_run / "report" / "report.html"
    page, seen = open_watched(browser, lambda p: p.goto(html.as_uri()))
    assert seen == {"dialogs": [], "errors": []}
    assert page.evaluate("document.scripts.length") == 0
    assert page.locator("img[src^='x']").count() == 0  # no injected element exists
    tables = page.locator("table")
    assert tables.count() == html.read_text().count("<table>") >= 3
    for index in range(tables.count()):
        table = tables.nth(index)
        assert table.is_visible() and table.locator("tbody tr").count() >= 1
    images = page.locator("figure img")
    assert images.count() >= 2
    for index in range(images.count()):
        assert images.nth(index).evaluate("img => img.complete && img.naturalWidth > 0")
    assert HOSTILE in page.inner_text("body")  # the hostile name is shown as text
    page.close()
