"""Page scripts the browser tests share (evaluated in the page by Playwright): JupyterLab's state, images."""

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
