"""GlyphNet: the course's built-in VGG-style CNN for GlyphWorld (64x64 RGB icons, 10 classes).

Plain stacks of 3x3 convolutions and max pools as in VGG (Simonyan & Zisserman 2015), except the first
convolution, whose 7x7 kernels are large enough to show as edge and colour detectors (lecture 1). Its class
names, input size and normalization travel with its weights (``weights/glyphnet.json``, read by ``load_model``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

#: Friendly layer name -> module path; each is the block's output after its ReLU (or pool).
GLYPHNET_LAYERS: dict[str, str] = {
    "conv1": "features.relu1",
    "pool1": "features.pool1",
    "conv2": "features.relu2",
    "pool2": "features.pool2",
    "conv3": "features.relu3",
    "pool3": "features.pool3",
    "conv4": "features.relu4",
    "pool4": "features.pool4",
    "fc1": "classifier.relu5",
    "logits": "classifier.fc2",
}


class GlyphNet(nn.Module):
    """conv7-24, pool, conv3-48, pool, conv3-96, pool, conv3-128, pool, fc-128, fc-classes (about 0.4 M parameters)."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(3, 24, kernel_size=7, padding=3),
                relu1=nn.ReLU(),
                pool1=nn.MaxPool2d(2),
                conv2=nn.Conv2d(24, 48, kernel_size=3, padding=1),
                relu2=nn.ReLU(),
                pool2=nn.MaxPool2d(2),
                conv3=nn.Conv2d(48, 96, kernel_size=3, padding=1),
                relu3=nn.ReLU(),
                pool3=nn.MaxPool2d(2),
                conv4=nn.Conv2d(96, 128, kernel_size=3, padding=1),
                relu4=nn.ReLU(),
                pool4=nn.MaxPool2d(2),
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(128 * 4 * 4, 128),
                relu5=nn.ReLU(),
                dropout=nn.Dropout(dropout),
                fc2=nn.Linear(128, num_classes),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))
