"""viztools: the library behind the course "Visualization, Deep Dream, Neural Style, Adversarial Examples".

One module per technique (``viztools.occlusion``, ``viztools.saliency``, ``viztools.style``, ...), each a set
of pure functions on pixel tensors plus a ``plot_*`` helper; widgets live in ``viztools.widgets``. The most used
names are re-exported here; a function named like its module (``occlusion``, ``saliency``,
``class_visualization``, ``deepdream``, ``optimize``) is reached through its module, e.g.
``viztools.occlusion.occlusion(model, image)``, so that the module itself stays importable as ``viztools.<name>``.

Names and submodules are imported on first use (PEP 562), so ``import viztools`` and the ``viztools`` command
start quickly; the first use of a name imports its module (and torch).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

__version__ = "0.1.0"

# Public name -> "module" (the submodule of viztools that defines it under the same name) or "module:attribute".
# To export a new name, add one line here: __all__, dir() and `from viztools import NAME` follow from this table.
_EXPORTS: dict[str, str] = {
    "FoolingResult": "adversarial",
    "fgsm": "adversarial",
    "fooling_image": "adversarial",
    "fooling_image_optimization": "adversarial",
    "iterative_fgsm": "adversarial",
    "magnified_difference": "adversarial",
    "plot_fooling": "adversarial",
    "unrecognizable_image": "adversarial",
    "unrecognizable_image_optimization": "adversarial",
    "ClassVisualizationResult": "class_visualization",
    "class_visualization_optimization": "class_visualization",
    "plot_class_visualization": "class_visualization",
    "PhotoCrops": "data",
    "example_image": "data",
    "example_image_names": "data",
    "load_image": "data",
    "to_numpy_image": "data",
    "DeepDreamResult": "deepdream",
    "deepdream_optimization": "deepdream",
    "plot_deepdream": "deepdream",
    "Embedding": "embeddings",
    "plot_tsne": "embeddings",
    "plot_tsne_grid": "embeddings",
    "tsne_embedding": "embeddings",
    "tsne_grid": "embeddings",
    "filter_grid": "filters",
    "plot_filters": "filters",
    "GLYPHWORLD_CLASSES": "glyphworld:CLASS_NAMES",
    "GlyphWorld": "glyphworld",
    "make_glyphworld": "glyphworld",
    "LOGITS": "hooks",
    "capture_activations": "hooks",
    "forward_activations": "hooks",
    "get_activations": "hooks",
    "receptive_field": "hooks",
    "GradCamResult": "grad_cam",
    "plot_grad_cam": "grad_cam",
    "IntegratedGradientsResult": "integrated_gradients",
    "plot_integrated_gradients": "integrated_gradients",
    "invert_features": "inversion",
    "InversionResult": "inversion",
    "invert_features_optimization": "inversion",
    "plot_inversion": "inversion",
    "show_images": "plotting",
    "MODEL_NAMES": "models",
    "VizModel": "models",
    "load_model": "models",
    "wrap_model": "models",
    "OcclusionCancelled": "occlusion",
    "OcclusionProgress": "occlusion",
    "OcclusionResult": "occlusion",
    "occlusion_coarse_to_fine": "occlusion",
    "plot_occlusion": "occlusion",
    "Objective": "optimize",
    "LoopSettings": "optimize",
    "Optimization": "optimize",
    "OptimizationResult": "optimize",
    "Progress": "optimize",
    "Run": "optimize",
    "run": "optimize",
    "PatchesResult": "patches",
    "plot_patches": "patches",
    "plot_patches_grid": "patches",
    "top_activating_patches": "patches",
    "deconvnet": "saliency",
    "guided_backprop": "saliency",
    "input_gradient": "saliency",
    "neuron_gradient": "saliency",
    "plot_saliency": "saliency",
    "SmoothGradResult": "smooth_grad",
    "plot_smooth_grad": "smooth_grad",
    "gram_matrix": "style",
    "plot_style_transfer": "style",
    "StyleTransferResult": "style",
    "style_transfer": "style",
    "style_transfer_optimization": "style",
}

__all__ = sorted(["__version__", *_EXPORTS])


def __getattr__(name: str) -> Any:
    """Import an exported name's module (or a submodule such as ``viztools.occlusion``) on first access."""
    if name in _EXPORTS:
        module_name, _, attribute = _EXPORTS[name].partition(":")
        value = getattr(importlib.import_module(f"{__name__}.{module_name}"), attribute or name)
    elif not name.startswith("_") and name in _submodules():
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """Exported names and submodules, for tab completion."""
    return sorted({*globals(), *__all__, *_submodules()})


def _submodules() -> set[str]:
    return {module.name for module in pkgutil.iter_modules(__path__) if not module.name.startswith("_")}
