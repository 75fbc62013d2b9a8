"""Every viztools widget in one real JupyterLab: one notebook, one kernel, one browser page.

Opening every lecture would take too long, so the test writes a small notebook (``test-output/browser/
widgets.ipynb``, under the server's root) with one cell per widget, each the one-liner a lecture uses, on GlyphNet
(fast). After running all cells, for each widget it waits for the first picture and for the computation to settle,
moves ONE control (a slider's handle: focus + ArrowRight), asserts that the picture changed (SHA-256 of the
``img.widget-image`` bytes; the plot's SVG for a plotly widget) and that no JavaScript error appeared, and saves
``test-output/browser/widget_<name>.png``. Then, at 1024x768 with 150% browser zoom (a 683x512 CSS-pixel viewport
at device scale factor 1.5, which is what Chromium's zoom does), it checks that nothing of any widget sticks out
to the right of the notebook's output area or the window, and saves ``widget_<name>_zoom150.png`` and
``widget_<name>_zoom150_bottom.png`` (the window as the audience sees it, scrolled to the widget's top, then its
bottom).

All cells run at once (run all), so the widgets compute at the same time on one model, in their background threads
and the kernel's: a hook one thread attaches must not stop or record another thread's forward pass.

Widgets are taken from ``viztools.widgets.__all__``: a widget listed in :data:`WIDGETS` but not exported yet is
skipped with the reason. Run with ``pytest -m browser tests/browser/test_lab_widgets.py`` (about two minutes).
"""

from __future__ import annotations

import ast
import base64
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lab_scripts import KERNEL_IDLE, RUN_STATE

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "test-output" / "browser" / "widgets.ipynb"  # under the server's root (conftest: OUTPUT_DIR)
SETUP = """\
import viztools
from viztools.widgets import {names}

model = viztools.load_model("glyphnet")
images, labels = viztools.make_glyphworld(10, seed=0)
star = images[6:7]  # lecture 03's GlyphWorld star"""


@dataclass(frozen=True)
class WidgetCase:
    """One widget: the notebook cell that shows it and the description of the slider the test moves."""

    name: str
    cell: str
    slider: str
    plotly: bool = False


#: In lecture order; each cell is the one-liner the lecture ends with (GlyphNet).
WIDGETS = [
    WidgetCase("LayerExplorer", "LayerExplorer(model)", "channel"),
    WidgetCase("EmbeddingExplorer", "EmbeddingExplorer(model)", "perplexity", plotly=True),
    WidgetCase("OcclusionExplorer", "OcclusionExplorer(model, star, patch_size=12, stride=4)", "patch size"),
    WidgetCase("SaliencyExplorer", 'SaliencyExplorer(model, "cat")', "clip at pct"),
    WidgetCase("ClassVisualizer", 'ClassVisualizer(model, "heart", steps=60)', "L2"),
    WidgetCase("InversionExplorer", 'InversionExplorer(model, "cat")', "TV weight"),
    WidgetCase("DeepDreamExplorer", 'DeepDreamExplorer(model, "cat")', "step size"),
    WidgetCase("StyleExplorer", 'StyleExplorer(model, "cat", "stained_cells")', "content"),
    WidgetCase("AdversarialExplorer", 'AdversarialExplorer(model, "cat")', "magnify x"),
]


def exported_widgets() -> list[str]:
    """``viztools.widgets.__all__``, read from the source (no torch import in the test process)."""
    tree = ast.parse((REPO / "viztools" / "widgets" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return []


AVAILABLE = [case for case in WIDGETS if case.name in exported_widgets()]
CELL_OF = {case.name: index + 1 for index, case in enumerate(AVAILABLE)}  # code cell 0 is the set-up

# JupyterLab at 1024x768 with 150% zoom: the CSS-pixel viewport and the device pixels per CSS pixel.
ZOOMED = {"width": 683, "height": 512, "deviceScaleFactor": 1.5, "mobile": False}
ZOOM_APPLIED = "() => window.innerWidth === 683 && window.devicePixelRatio === 1.5"

# SHA-256 of what the widget shows: the bytes behind its first <img> (a blob: URL), or a plotly plot's SVG.
PICTURE_DIGEST = """async (explorer, plotly) => {
  let bytes;
  if (plotly) {
    const plot = explorer.querySelector('.js-plotly-plot');
    if (!plot) return '';
    const svg = [...plot.querySelectorAll('svg.main-svg')].map(node => node.outerHTML).join('');
    bytes = new TextEncoder().encode(svg + JSON.stringify((plot.data || []).map(t => [t.x, t.y, t.marker])));
  } else {
    const img = explorer.querySelector('img.widget-image');
    if (!img || !img.src || !img.complete || img.naturalWidth === 0) return '';
    bytes = await (await fetch(img.src)).arrayBuffer();
  }
  const digest = await crypto.subtle.digest('SHA-256', bytes);
  return Array.from(new Uint8Array(digest), byte => byte.toString(16).padStart(2, '0')).join('');
}"""

# 'done' once the widget's progress caption says its computation finished (or came from the cache), 'failed:
# ...' when the widget shows an error, '' otherwise.
SETTLED = """(explorer) => {
  const error = explorer.querySelector('.viztools-error');
  if (error) return 'failed: ' + error.textContent.trim().slice(0, 400);
  const captions = [...explorer.querySelectorAll('.widget-label')].map(node => node.textContent.trim());
  return captions.some(text => /^(done|shown from cache)/.test(text)) ? 'done' : '';
}"""

# Elements of the widget whose right edge passes the output area's (or the window's) right edge by more than
# ipywidgets' 2 px widget margin (a picture at `max-width: 100%` keeps its margin beside it), and elements at that
# edge whose content is clipped inside their own box (a label squeezed by the edge shows only part of its text).
OVERFLOW = """(explorer) => {
  const area = explorer.closest('.jp-OutputArea-output') || explorer.parentElement;
  const limit = Math.min(area.getBoundingClientRect().right, document.documentElement.clientWidth);
  const describe = node => {
    const classes = [...node.classList].filter(c => !c.startsWith('lm-')).slice(0, 3).join('.');
    const text = (node.innerText || node.alt || '').trim().replace(/\\s+/g, ' ').slice(0, 40);
    return `<${node.tagName.toLowerCase()}${classes ? '.' + classes : ''}> "${text}"`;
  };
  const outside = [];
  for (const node of [explorer, ...explorer.querySelectorAll('*')]) {
    const box = node.getBoundingClientRect();
    if (box.width === 0 || box.height === 0 || getComputedStyle(node).visibility === 'hidden') continue;
    if (box.right > limit + 2.5) {
      outside.push(`${describe(node)} right edge ${Math.round(box.right)} px`);
    } else if (box.right > limit - 4 && node.scrollWidth > node.clientWidth + 4
               && getComputedStyle(node).overflowX !== 'visible') {
      // cut off by the edge inside its own box (beyond the margins): a label squeezed by the edge, its text clipped
      outside.push(`${describe(node)} clipped at the edge: shows ${node.clientWidth} of ${node.scrollWidth} px`);
    }
  }
  return {limit: Math.round(limit), explorerRight: Math.round(explorer.getBoundingClientRect().right),
          outside: outside.slice(0, 8), count: outside.length};
}"""


def write_notebook(cases: list[WidgetCase]) -> Path:
    """The test notebook: a set-up cell, then one cell per widget holding the lecture's one-liner."""
    names = ", ".join(case.name for case in cases)
    sources = [SETUP.format(names=names), *(case.cell for case in cases)]
    notebook = {
        "cells": [{"cell_type": "code", "execution_count": None, "id": f"cell-{index}", "metadata": {},
                   "outputs": [], "source": source} for index, source in enumerate(sources)],
        "metadata": {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
                     "language_info": {"name": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    NOTEBOOK.parent.mkdir(parents=True, exist_ok=True)
    NOTEBOOK.write_text(json.dumps(notebook, indent=1))
    return NOTEBOOK


class JsErrors:
    """Uncaught exceptions and console errors of the page, in order."""

    def __init__(self, page) -> None:
        self.seen: list[str] = []
        page.on("pageerror", lambda error: self.seen.append(f"uncaught: {error}"))
        page.on("console", lambda message: message.type == "error"
                and self.seen.append(f"console.error: {message.text}"))

    def since(self, mark: int) -> list[str]:
        return self.seen[mark:]


@dataclass
class WidgetsPage:
    page: object
    errors: JsErrors
    load_errors: list[str]


@pytest.fixture(scope="module")
def widgets_page(chromium_browser, lab_server) -> Iterator[WidgetsPage]:
    """The test notebook opened in JupyterLab with every cell run (left sidebar collapsed, as on a projector)."""
    if not AVAILABLE:
        pytest.skip("viztools.widgets exports none of the widgets this test knows")
    path = write_notebook(AVAILABLE)
    context = chromium_browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors = JsErrors(page)
    try:
        page.goto(lab_server.notebook_url(path.relative_to(REPO).as_posix()))
        page.wait_for_function(KERNEL_IDLE, timeout=120_000)
        page.evaluate("() => { window.jupyterapp.shell.collapseLeft(); }")
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        deadline = time.monotonic() + 180
        while (state := page.evaluate(RUN_STATE)) != "done":
            if state.startswith("error"):
                pytest.fail(f"A cell of {path.name} failed in JupyterLab: {state}")
            if time.monotonic() > deadline:
                pytest.fail(f"{path.name} did not finish running within 180 s")
            time.sleep(1.0)
        for case in AVAILABLE:
            first_picture(page, case)
        yield WidgetsPage(page, errors, list(errors.seen))
    finally:
        context.close()
        lab_server.shutdown_kernels()


def explorer_of(page, case: WidgetCase):
    cell = page.locator(".jp-Notebook .jp-CodeCell").nth(CELL_OF[case.name])
    return cell.locator(".viztools-explorer, .viztools-occlusion").first


def wait_until(check, what: str, timeout: float, interval: float = 0.25):
    """Poll ``check()`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"{what} within {timeout} s")


def settle(explorer, case: WidgetCase, timeout: float = 60) -> None:
    def state() -> str:
        value = explorer.evaluate(SETTLED)
        if value.startswith("failed"):
            pytest.fail(f"{case.name} shows an error: {value}")
        return value

    wait_until(state, f"{case.name} did not finish computing", timeout)


def first_picture(page, case: WidgetCase):
    """The widget's element once it shows a picture and its computation has finished."""
    explorer = explorer_of(page, case)
    wait_until(lambda: explorer.count() and digest(explorer, case), f"{case.name} showed no picture", 60)
    settle(explorer, case)
    return explorer


def digest(explorer, case: WidgetCase) -> str:
    return explorer.evaluate(PICTURE_DIGEST, case.plotly)


def skip_if_missing(case: WidgetCase) -> None:
    if case.name not in CELL_OF:
        pytest.skip(f"{case.name} is not in viztools.widgets.__all__ yet (being written)")


@pytest.mark.parametrize("case", WIDGETS, ids=[case.name for case in WIDGETS])
def test_widget_draws_and_slider_changes_picture(widgets_page: WidgetsPage, case: WidgetCase, screenshot_dir):
    skip_if_missing(case)
    page, errors = widgets_page.page, widgets_page.errors
    assert not widgets_page.load_errors, "JavaScript errors while the notebook opened and ran:\n" + "\n".join(
        widgets_page.load_errors)
    mark = len(errors.seen)
    explorer = first_picture(page, case)
    explorer.scroll_into_view_if_needed()
    before = digest(explorer, case)

    label = re.compile(rf"^\s*{re.escape(case.slider)}\s*$")
    slider = explorer.locator(".widget-slider").filter(has=page.locator(".widget-label", has_text=label))
    assert slider.count() == 1, f"{case.name} has {slider.count()} sliders described {case.slider!r}"
    readout = slider.locator(".widget-readout")
    old_value = readout.inner_text()
    handle = slider.locator(".noUi-handle")
    handle.focus()
    handle.press("ArrowRight")
    wait_until(lambda: readout.inner_text() != old_value,
               f"{case.name}: the {case.slider!r} slider did not move on ArrowRight", 10, 0.1)
    after = wait_until(lambda: (d := digest(explorer, case)) and d != before and d,
                       f"{case.name}: the picture did not change after moving {case.slider!r} "
                       f"from {old_value} to {readout.inner_text()}", 60)
    settle(explorer, case)
    assert after != before
    new_errors = errors.since(mark)
    assert not new_errors, f"JavaScript errors around {case.name}:\n" + "\n".join(new_errors)

    page.wait_for_timeout(200)  # let the last PNG paint
    explorer.screenshot(path=str(screenshot_dir / f"widget_{case.name}.png"))


@dataclass
class ZoomedPage:
    page: object
    cdp: object  # a CDP session: Playwright's own screenshot would reset the zoom emulation

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.cdp.send("Page.captureScreenshot", {"format": "png"})["data"]))


@pytest.fixture(scope="module")
def zoomed_page(widgets_page: WidgetsPage) -> Iterator[ZoomedPage]:
    """The same page at 1024x768 and 150% zoom (layout in 683x512 CSS pixels, drawn at 1.5 device px each)."""
    page = widgets_page.page
    session = page.context.new_cdp_session(page)
    session.send("Emulation.setDeviceMetricsOverride", ZOOMED)
    page.wait_for_function(ZOOM_APPLIED)
    page.wait_for_timeout(500)  # JupyterLab lays its panels out again after the resize
    try:
        yield ZoomedPage(page, session)
    finally:
        session.send("Emulation.clearDeviceMetricsOverride")
        session.detach()


@pytest.mark.parametrize("case", WIDGETS, ids=[case.name for case in WIDGETS])
def test_widget_fits_at_150_percent_zoom(zoomed_page: ZoomedPage, case: WidgetCase, screenshot_dir):
    skip_if_missing(case)
    page = zoomed_page.page
    explorer = explorer_of(page, case)
    assert page.evaluate(ZOOM_APPLIED), "the 150% zoom emulation was lost"
    # what the audience sees: the window with the widget's top at the top, then with its bottom at the bottom
    for block, suffix in (("start", ""), ("end", "_bottom")):
        explorer.evaluate("(node, block) => node.scrollIntoView({block})", block)
        page.wait_for_timeout(150)
        zoomed_page.screenshot(screenshot_dir / f"widget_{case.name}_zoom150{suffix}.png")
    report = explorer.evaluate(OVERFLOW)
    assert report["count"] == 0, (
        f"{case.name} at 1024x768 and 150% zoom: {report['count']} elements pass the right edge of the notebook's "
        f"output area ({report['limit']} CSS px; the widget's own box ends at {report['explorerRight']} px):\n"
        + "\n".join(report["outside"])
    )
