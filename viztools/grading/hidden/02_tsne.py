"""Hidden checks of exercise 02 (nearest neighbours, k-NN agreement): other vectors, labels, sizes and images.

Expected values are computed here: distances in float64, neighbours from them (the inputs are drawn so that no two
candidates tie), agreement with ``viztools.embeddings.knn_label_agreement`` and chance with
``chance_label_agreement``. When a wrong answer matches a known mistake (a squared distance, a similarity instead of
a distance, the query counted as its own neighbour, the farthest instead of the nearest), the feedback names it.
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F

import viztools
from viztools.embeddings import chance_label_agreement, knn_label_agreement
from viztools.grading.checks import close_problem
from viztools.grading.proxy import Student, close, equal, reference_model

DISTANCE_HINT = ("Hint: Euclidean is the square root of the summed squared differences (torch.cdist); cosine is "
                 "1 - (a . b) / (|a| |b|): normalize the rows, then a matrix product.")
NEIGHBOURS_HINT = ("Hint: compute the distances from each query to all vectors, set the query's own entry to "
                   "infinity (by its index), and take the k smallest with topk(k, largest=False).")
AGREEMENT_HINT = ("Hint: for every row, take its k nearest neighbours (itself excluded), compare their labels with "
                  "its label, and average the matches over all rows and neighbours.")
CHANCE_HINT = "Hint: chance = sum over classes of (n_c / n) x (n_c - 1) / (n - 1)."


def _vectors(rng: random.Random, count: int, dims: int, scale_spread: bool = True) -> torch.Tensor:
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    vectors = torch.randn(count, dims, generator=generator)
    if scale_spread:  # lengths that differ a lot, so cosine and Euclidean neighbours differ
        vectors *= torch.rand(count, 1, generator=generator) * 4 + 0.2
    return vectors


def reference_distances(a: torch.Tensor, b: torch.Tensor, metric: str) -> torch.Tensor:
    a, b = a.double(), b.double()
    if metric == "cosine":
        return 1 - F.normalize(a, dim=1) @ F.normalize(b, dim=1).T
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(dim=2).sqrt()


def reference_neighbours(vectors: torch.Tensor, queries: torch.Tensor, k: int, metric: str,
                         include_self: bool = False, farthest: bool = False) -> torch.Tensor:
    distances = reference_distances(vectors[queries], vectors, metric)
    if not include_self:
        distances[torch.arange(len(queries)), queries] = -float("inf") if farthest else float("inf")
    return distances.topk(k, largest=farthest).indices


def _matches(got: object, expected: torch.Tensor, atol: float = 1e-4) -> bool:
    return not isinstance(got, dict) and close_problem(got, expected, atol=atol, rtol=1e-4) is None


def check_distances(student: Student, rng: random.Random) -> list[str]:
    """pairwise_distances for both metrics on vectors of other sizes and lengths than the visible check."""
    problems, mistakes = [], []
    for n, m, dims in [(rng.randrange(3, 9), rng.randrange(3, 9), rng.randrange(2, 40)), (12, 1, 300)]:
        a, b = _vectors(rng, n, dims), _vectors(rng, m, dims)
        for metric in ("euclidean", "cosine"):
            expected = reference_distances(a, b, metric)
            got = student.call("pairwise_distances", a, b, metric).value
            problem = close(f"{metric}, {n} x {m} vectors of {dims} numbers", got, expected, atol=1e-4, rtol=1e-4)
            if not problem:
                continue
            problems += problem
            if metric == "euclidean" and _matches(got, expected**2):
                mistakes.append("your Euclidean distances are squared: take the square root.")
            if metric == "cosine":
                if _matches(got, 1 - expected):
                    mistakes.append("your cosine values are similarities: the distance is 1 - similarity.")
                elif _matches(got, 1 - a.double() @ b.double().T) or _matches(got, a.double() @ b.double().T):
                    mistakes.append("your cosine values are not normalized: divide by the lengths |a| |b| (the "
                                    "cosine distance ignores the vectors' lengths).")
                elif _matches(got, reference_distances(a, b, "euclidean")):
                    mistakes.append("metric='cosine' gives Euclidean distances: look at the metric argument.")
    return [*problems, *dict.fromkeys(mistakes), DISTANCE_HINT] if problems else []


def check_neighbours(student: Student, rng: random.Random) -> list[str]:
    """nearest_neighbours for both metrics, several queries and k, and a data set holding a copy of a query."""
    problems, mistakes = [], []
    count = rng.randrange(30, 60)
    vectors = _vectors(rng, count, rng.randrange(3, 20))
    queries = torch.tensor(rng.sample(range(count), rng.randrange(3, 7)))
    copy_of = int(queries[0])
    vectors = torch.cat([vectors, vectors[copy_of : copy_of + 1]])  # an exact copy of the first query, at the end
    for metric in ("euclidean", "cosine"):
        k = rng.randrange(2, 7)
        got = student.call("nearest_neighbours", vectors, queries, k, metric).value
        if isinstance(got, torch.Tensor) and not got.is_floating_point():
            got = got.tolist()
        expected = reference_neighbours(vectors, queries, k, metric)
        problem = equal(f"{metric}, {len(queries)} queries among {count + 1} vectors, k={k}", got, expected.tolist())
        if not problem:
            continue
        problems += problem
        rows = got if isinstance(got, list) and all(isinstance(row, list) and row for row in got) else []
        if rows and len(rows) == len(queries) and any(q in row for q, row in zip(queries.tolist(), rows, strict=True)):
            mistakes.append("a query is among its own neighbours: set its own distance to infinity first.")
        elif got == reference_neighbours(vectors, queries, k, metric, farthest=True).tolist():
            mistakes.append("these are the farthest vectors: take the k smallest distances.")
        elif rows and count not in rows[0]:
            mistakes.append(f"the first query has an exact copy (row {count}) that is missing from its neighbours: "
                            "exclude the query by its index, not by a distance of 0.")
        other = "euclidean" if metric == "cosine" else "cosine"
        if got == reference_neighbours(vectors, queries, k, other).tolist():
            mistakes.append(f"metric={metric!r} gives the {other} neighbours: pass the metric on to "
                            "pairwise_distances.")
    return [*problems, *dict.fromkeys(mistakes), NEIGHBOURS_HINT] if problems else []


def _clustered(rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """Labelled points in loose clusters (agreement well between chance and 1)."""
    classes, count, dims = rng.randrange(3, 6), rng.randrange(40, 80), rng.randrange(2, 10)
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    labels = torch.randint(0, classes, (count,), generator=generator)
    centres = torch.randn(classes, dims, generator=generator) * 2
    return centres[labels] + torch.randn(count, dims, generator=generator), labels


def check_agreement(student: Student, rng: random.Random) -> list[str]:
    """knn_agreement on random clusters (both metrics) and on GlyphNet fc1 features of unseen GlyphWorld images."""
    problems, mistakes = [], []
    vectors, labels = _clustered(rng)
    network = reference_model()
    images, glyph_labels = viztools.make_glyphworld(rng.randrange(80, 120), seed=rng.randrange(10, 10_000))
    fc1 = viztools.get_activations(network, images, ["fc1"])["fc1"]
    cases = [("random clusters", vectors, labels, "euclidean"), ("random clusters", vectors, labels, "cosine"),
             ("GlyphNet fc1 features", fc1, glyph_labels, "euclidean")]
    for what, points, point_labels, metric in cases:
        k = rng.randrange(3, 12)
        scaled = F.normalize(points.double(), dim=1) if metric == "cosine" else points.double()
        expected = knn_label_agreement(scaled.numpy(), point_labels.numpy(), k=k)
        got = student.call("knn_agreement", points, point_labels, k, metric).value
        problem = close(f"{what}, {metric}, k={k}", got, torch.tensor(expected), atol=1e-6)
        if not problem:
            continue
        problems += problem
        with_self = knn_label_agreement(scaled.numpy(), point_labels.numpy(), k=k - 1) * (k - 1) / k + 1 / k
        if _matches(got, torch.tensor(with_self), atol=1e-6):
            mistakes.append("your agreement counts each point as its own neighbour (one of the k): exclude it.")
    return [*problems, *dict.fromkeys(mistakes), AGREEMENT_HINT] if problems else []


def check_chance(student: Student, rng: random.Random) -> list[str]:
    """chance_agreement on unbalanced labels with classes that are missing and classes with one point."""
    problems, mistakes = [], []
    for _ in range(3):
        counts = [rng.choice([0, 1, rng.randrange(2, 30)]) for _ in range(rng.randrange(3, 8))] + [rng.randrange(2, 9)]
        labels = torch.tensor([c for c, n in enumerate(counts) for _ in range(n)])
        labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(rng.randrange(2**31)))]
        expected = chance_label_agreement(labels.numpy())
        got = student.call("chance_agreement", labels).value
        problem = close(f"class sizes {counts}", got, torch.tensor(expected), atol=1e-6)
        if problem:
            problems += problem
            present = np.array([n for n in counts if n])
            if _matches(got, torch.tensor(float(((present / present.sum()) ** 2).sum())), atol=1e-6):
                mistakes.append("your value is sum (n_c / n)^2, which lets a point draw itself: use "
                                "(n_c - 1) / (n - 1).")
            elif _matches(got, torch.tensor(1 / len(present)), atol=1e-6):
                mistakes.append("1 / (number of classes) is chance only for equally common classes (and a point "
                                "cannot draw itself).")
    return [*problems, *dict.fromkeys(mistakes), CHANCE_HINT] if problems else []
