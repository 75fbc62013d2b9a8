"""Interactive widgets for the lectures (ipywidgets 8): thin composers over the technique modules."""

from viztools.widgets.adversarial import AdversarialExplorer
from viztools.widgets.class_visualization import ClassVisualizer
from viztools.widgets.occlusion import OcclusionExplorer

__all__ = ["AdversarialExplorer", "ClassVisualizer", "OcclusionExplorer"]
