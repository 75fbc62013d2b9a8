"""viztools: the library behind the course "Visualization, Deep Dream, Neural Style, Adversarial Examples"."""

from viztools.data import example_image, example_image_names, load_image, to_numpy_image
from viztools.glyphworld import CLASS_NAMES as GLYPHWORLD_CLASSES
from viztools.glyphworld import GlyphWorld, make_glyphworld
from viztools.hooks import capture_activations, get_activations, receptive_field
from viztools.models import MODEL_NAMES, VizModel, load_model

__version__ = "0.1.0"

__all__ = [
    "GLYPHWORLD_CLASSES",
    "MODEL_NAMES",
    "GlyphWorld",
    "VizModel",
    "__version__",
    "capture_activations",
    "example_image",
    "example_image_names",
    "get_activations",
    "load_image",
    "load_model",
    "make_glyphworld",
    "receptive_field",
    "to_numpy_image",
]
