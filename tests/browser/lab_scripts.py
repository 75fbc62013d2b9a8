"""Page scripts the browser tests share (evaluated in the page by Playwright: JupyterLab's state, images) and the
steps they take alike (moving a widget's slider)."""

KERNEL_IDLE = """() => {
  const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const kernel = panel && panel.sessionContext && panel.sessionContext.session
    && panel.sessionContext.session.kernel;
  return Boolean(kernel) && kernel.status === 'idle';
}"""

# '' while cells are still running, 'done' when every code cell ran, 'error: ...' at the first failing cell.
RUN_STATE = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const cells = panel.content.widgets.filter(cell => cell.model.type === 'code');
  for (const cell of cells) {
    for (const output of cell.model.outputs.toJSON()) {
      if (output.output_type === 'error') {
        return 'error: ' + output.ename + ': ' + output.evalue;
      }
    }
  }
  const ran = cells.every(cell => cell.model.executionCount !== null);
  return ran && panel.sessionContext.session.kernel.status === 'idle' ? 'done' : '';
}"""

# SHA-256 of the bytes behind the widget's <img> (ipywidgets serves them as a blob: URL).
IMAGE_DIGEST = """async (img) => {
  const response = await fetch(img.src);
  const digest = await crypto.subtle.digest('SHA-256', await response.arrayBuffer());
  return Array.from(new Uint8Array(digest), byte => byte.toString(16).padStart(2, '0')).join('');
}"""


def raise_slider(page, explorer, label: str, presses: int = 4) -> tuple[int, int]:
    """Focus the ``label`` slider of a widget and press ArrowRight ``presses`` times, as a user would; wait until its
    readout shows a larger value. Returns (old, new) readout values."""
    slider = explorer.locator(".widget-slider").filter(has_text=label)
    readout = slider.locator(".widget-readout")
    old = int(readout.inner_text())
    handle = slider.locator(".noUi-handle")
    handle.focus()
    for _ in range(presses):
        handle.press("ArrowRight")
    page.wait_for_function("([node, old]) => Number(node.textContent) > old",
                           arg=[readout.element_handle(), old], timeout=10_000)
    return old, int(readout.inner_text())
