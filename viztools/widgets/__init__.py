"""Interactive widgets for the lectures (ipywidgets 8): thin composers over the technique modules."""

from viztools.widgets.adversarial import AdversarialExplorer
from viztools.widgets.class_visualization import ClassVisualizer
from viztools.widgets.deepdream import DeepDreamExplorer
from viztools.widgets.embeddings import EmbeddingExplorer
from viztools.widgets.inversion import InversionExplorer
from viztools.widgets.layers import LayerExplorer
from viztools.widgets.occlusion import OcclusionExplorer
from viztools.widgets.saliency import SaliencyExplorer
from viztools.widgets.style import StyleExplorer

__all__ = [
    "AdversarialExplorer",
    "ClassVisualizer",
    "DeepDreamExplorer",
    "EmbeddingExplorer",
    "InversionExplorer",
    "LayerExplorer",
    "OcclusionExplorer",
    "SaliencyExplorer",
    "StyleExplorer",
]
