"""Train GlyphNet on GlyphWorld, deterministically, on a laptop CPU (``viztools train-glyphnet``).

The weights that ship with viztools were made by :func:`train_glyphnet` with its defaults; the metadata file
beside them records what :func:`viztools.load_model` needs (class names, input size, the normalization used in
training), the settings and the measured held-out accuracy.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from viztools._validation import check_float, check_int
from viztools.glyphnet import GlyphNet
from viztools.glyphworld import CLASS_NAMES, IMAGE_SIZE, make_glyphworld
from viztools.models import GLYPHNET_WEIGHTS

TRAIN_SEED = 0
HELD_OUT_SEED = 1
#: Input normalization used in training, recorded in the metadata file (``model.mean``, ``model.std``).
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


@dataclass
class TrainingReport:
    """What a training run did and how well the result classifies fresh GlyphWorld images."""

    train_images: int
    epochs: int
    seed: int
    held_out_images: int
    held_out_accuracy: float
    seconds: float
    torch_version: str
    threads: int


def _generate(n: int, seed: int, workers: int, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """GlyphWorld samples as uint8 pixels (to keep 30k images in ~400 MB) and labels, generated in parallel.

    Worker processes are spawned, not forked: forking after torch started its thread pool can deadlock.
    """
    chunk = 1000
    starts = list(range(0, n, chunk))
    images = torch.empty(n, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    labels = torch.empty(n, dtype=torch.int64)
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [pool.submit(make_glyphworld, min(chunk, n - start), seed, start=start) for start in starts]
        bar = tqdm(jobs, desc=f"generating {n} GlyphWorld images", unit="k", disable=not progress)
        for start, job in zip(starts, bar, strict=True):
            batch, batch_labels = job.result()
            images[start : start + len(batch)] = (batch * 255).round().to(torch.uint8)
            labels[start : start + len(batch)] = batch_labels
    return images, labels


def _normalize(images_uint8: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (images_uint8.float() / 255.0 - mean) / std


@torch.no_grad()
def accuracy(network: nn.Module, images_uint8: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``network`` (normalized input) on uint8 GlyphWorld pixels."""
    network.eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = network(_normalize(images_uint8[start : start + batch_size]))
        correct += int((logits.argmax(dim=1) == labels[start : start + batch_size]).sum())
    return correct / max(len(labels), 1)


def train_glyphnet(
    output: str | Path = GLYPHNET_WEIGHTS,
    *,
    train_images: int = 20_000,
    epochs: int = 4,
    batch_size: int = 128,
    learning_rate: float = 2e-3,
    held_out_images: int = 2_000,
    seed: int = TRAIN_SEED,
    workers: int = 2,
    progress: bool = True,
) -> TrainingReport:
    """Train GlyphNet from scratch with Adam and a cosine learning-rate schedule, then save its state_dict.

    Deterministic for a given machine, torch version and thread count: data, initialization and batch order
    all come from ``seed``. Held-out accuracy is measured on ``held_out_images`` fresh images (seed 1).
    """
    train_images = check_int(train_images, "train_images", low=batch_size)
    epochs = check_int(epochs, "epochs", low=1)
    learning_rate = check_float(learning_rate, "learning_rate", low=0, low_inclusive=False)
    started = time.perf_counter()
    images, labels = _generate(train_images, seed, workers, progress)
    held_out, held_out_labels = _generate(held_out_images, HELD_OUT_SEED, workers, progress)

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    network = GlyphNet(num_classes=len(CLASS_NAMES))
    optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate, weight_decay=1e-4)
    steps_per_epoch = math.ceil(train_images / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=learning_rate, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    loss_function = nn.CrossEntropyLoss()
    bar = tqdm(total=epochs * steps_per_epoch, desc="training GlyphNet", unit="batch", disable=not progress)
    for epoch in range(epochs):
        network.train()
        order = torch.randperm(train_images, generator=generator)
        for start in range(0, train_images, batch_size):
            batch = order[start : start + batch_size]
            loss = loss_function(network(_normalize(images[batch])), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    bar.close()

    report = TrainingReport(
        train_images=train_images,
        epochs=epochs,
        seed=seed,
        held_out_images=held_out_images,
        held_out_accuracy=round(accuracy(network, held_out, held_out_labels), 4),
        seconds=round(time.perf_counter() - started, 1),
        torch_version=torch.__version__,
        threads=torch.get_num_threads(),
    )
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in network.state_dict().items()}, output)
    metadata = {**asdict(report), "python": platform.python_version(), "categories": list(CLASS_NAMES),
                "input_size": IMAGE_SIZE, "mean": list(MEAN), "std": list(STD)}
    output.with_suffix(".json").write_text(json.dumps(metadata, indent=2) + "\n")
    return report
