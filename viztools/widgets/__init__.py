"""Interactive widgets for the lectures (ipywidgets 8): thin composers over the technique modules."""

from viztools.widgets.occlusion import OcclusionExplorer

__all__ = ["OcclusionExplorer"]
