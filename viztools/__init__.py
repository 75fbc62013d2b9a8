"""viztools: the library behind the course "Visualization, Deep Dream, Neural Style, Adversarial Examples".

One module per technique (``viztools.occlusion``, ``viztools.saliency``, ``viztools.style``, ...), each a set
of pure functions on pixel tensors plus a ``plot_*`` helper; widgets live in ``viztools.widgets``. The most used
names are re-exported here; a function named like its module (``occlusion``, ``saliency``,
``class_visualization``, ``deepdream``, ``optimize``) is reached through its module, e.g.
``viztools.occlusion.occlusion(model, image)``, so that the module itself stays importable as ``viztools.<name>``.
"""

from viztools.adversarial import (
    FoolingResult,
    fgsm,
    fooling_image,
    iterative_fgsm,
    magnified_difference,
    plot_fooling,
    unrecognizable_image,
)
from viztools.class_visualization import plot_class_visualizations
from viztools.data import example_image, example_image_names, load_image, to_numpy_image
from viztools.deepdream import plot_deepdream
from viztools.embeddings import Embedding, plot_tsne, plot_tsne_grid, tsne_embedding, tsne_grid
from viztools.filters import filter_grid, plot_filters
from viztools.glyphworld import CLASS_NAMES as GLYPHWORLD_CLASSES
from viztools.glyphworld import GlyphWorld, make_glyphworld
from viztools.hooks import LOGITS, capture_activations, forward_activations, get_activations, receptive_field
from viztools.inversion import invert_features, plot_inversions
from viztools.models import MODEL_NAMES, VizModel, load_model
from viztools.occlusion import OcclusionResult, occlusion_coarse_to_fine, plot_occlusion
from viztools.optimize import Objective, Optimization, OptimizationResult, Progress, run
from viztools.patches import PatchesResult, plot_patches, plot_patches_grid, top_activating_patches
from viztools.saliency import deconvnet, guided_backprop, input_gradient, neuron_gradient, plot_saliency
from viztools.style import gram_matrix, plot_style_transfer, style_transfer

__version__ = "0.1.0"

__all__ = [
    "GLYPHWORLD_CLASSES",
    "LOGITS",
    "MODEL_NAMES",
    "Embedding",
    "FoolingResult",
    "GlyphWorld",
    "Objective",
    "OcclusionResult",
    "Optimization",
    "OptimizationResult",
    "PatchesResult",
    "Progress",
    "VizModel",
    "__version__",
    "capture_activations",
    "deconvnet",
    "example_image",
    "example_image_names",
    "fgsm",
    "filter_grid",
    "fooling_image",
    "forward_activations",
    "get_activations",
    "gram_matrix",
    "guided_backprop",
    "input_gradient",
    "invert_features",
    "iterative_fgsm",
    "load_image",
    "load_model",
    "magnified_difference",
    "make_glyphworld",
    "neuron_gradient",
    "occlusion_coarse_to_fine",
    "plot_class_visualizations",
    "plot_deepdream",
    "plot_filters",
    "plot_fooling",
    "plot_inversions",
    "plot_occlusion",
    "plot_patches",
    "plot_patches_grid",
    "plot_saliency",
    "plot_style_transfer",
    "plot_tsne",
    "plot_tsne_grid",
    "receptive_field",
    "run",
    "style_transfer",
    "to_numpy_image",
    "top_activating_patches",
    "tsne_embedding",
    "tsne_grid",
    "unrecognizable_image",
]
