"""Lecture 03 in a real JupyterLab: run all cells, move the patch-size slider, see the heatmap change.

Run with ``pytest -m browser tests/browser`` (about a minute); skipped where /usr/bin/chromium is absent.
"""

from __future__ import annotations

import time

import pytest
from lab_scripts import IMAGE_DIGEST, KERNEL_IDLE, RUN_STATE, raise_slider

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NOTEBOOK = "lectures/03_occlusion.ipynb"


def run_all_cells(page, timeout: float) -> None:
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        time.sleep(1.0)
        state = page.evaluate(RUN_STATE)
        if state.startswith("error"):
            pytest.fail(f"A cell of {NOTEBOOK} failed in JupyterLab: {state}")
        if state == "done" and page.evaluate(RUN_STATE) == "done":
            return
    pytest.fail(f"{NOTEBOOK} did not finish running within {timeout} s")


def wait_for_new_image(image, old_digest: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        digest = image.evaluate(IMAGE_DIGEST)
        if digest != old_digest:
            return digest
        time.sleep(0.25)
    pytest.fail(f"The heatmap image did not change within {timeout} s of moving the slider")


def test_lecture_runs_and_patch_slider_redraws_heatmap(lab_page, lab_server, screenshot_dir):
    page = lab_page
    page.goto(lab_server.notebook_url(NOTEBOOK))
    page.wait_for_function(KERNEL_IDLE, timeout=120_000)
    run_all_cells(page, timeout=300)

    explorer = page.locator(".viztools-occlusion").last
    explorer.scroll_into_view_if_needed()
    image = explorer.locator("img.widget-image").first
    summary = explorer.locator(".viztools-summary")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.viztools-occlusion .viztools-summary')]"
        ".some(node => node.textContent.includes('full map'))",
        timeout=120_000,
    )
    assert explorer.locator(".viztools-error").count() == 0
    before = image.evaluate(IMAGE_DIGEST)

    old_patch, new_patch = raise_slider(page, explorer, "patch size")
    assert new_patch > old_patch

    wait_for_new_image(image, before, timeout=60)
    page.wait_for_function(
        "([node, patch]) => node.textContent.includes('full map') && node.textContent.includes(`patch ${patch} px`)",
        arg=[summary.element_handle(), new_patch],
        timeout=120_000,
    )
    assert explorer.locator(".viztools-error").count() == 0
    assert image.evaluate(IMAGE_DIGEST) != before

    page.wait_for_timeout(300)  # let the last PNG paint before the screenshot
    widget_shot = screenshot_dir / "lab_occlusion_widget.png"
    explorer.screenshot(path=str(widget_shot))
    page_shot = screenshot_dir / "lab_occlusion_page.png"
    page.screenshot(path=str(page_shot))
    print(f"screenshots: {widget_shot} {page_shot}")
