"""Exercise 02 (nearest neighbours, k-NN agreement): the hidden checks pass the solution, fail wrong variants.

The hidden checks run in-process against the solution's own task cells through a stand-in for the grader's
``Student`` proxy (arguments and results take the same ``torch.save`` round trip as with the kernel); one real
grading run each of the solution and the blank exercise is marked slow.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from exercise_support import run_hidden_check
from exercise_support import solution_namespace as support_namespace

from viztools.grading import grade
from viztools.grading.answer_key import load_key
from viztools.grading.proxy import StudentError, hidden_checks

REPO = Path(__file__).resolve().parents[1]
EXERCISE = "02_tsne"
SOLUTION, BLANK = REPO / "solutions" / f"{EXERCISE}.ipynb", REPO / "exercises" / f"{EXERCISE}.ipynb"
CHECKS = ["check-distances", "check-neighbours", "check-agreement", "check-chance"]


CHECK_FUNCTIONS = hidden_checks(EXERCISE)


def solution_namespace(**replace: object) -> dict:
    """The solution's task cells in a fresh namespace; ``replace`` overrides some of its functions."""
    return support_namespace(EXERCISE, replace=replace)


def run(check: str, namespace: dict, seed: int = 0) -> list[str]:
    return run_hidden_check(EXERCISE, check, namespace, seed)


def squared_euclidean(a, b, metric="euclidean"):
    if metric == "cosine":
        return 1 - torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).T
    return torch.cdist(a, b) ** 2


def cosine_similarity(a, b, metric="euclidean"):
    if metric == "cosine":
        return torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).T
    return torch.cdist(a, b)


def cosine_unnormalized(a, b, metric="euclidean"):
    return 1 - a @ b.T if metric == "cosine" else torch.cdist(a, b)


def neighbours_with_self(vectors, queries, k, metric="euclidean"):
    distances = solution_namespace()["pairwise_distances"](vectors[queries], vectors, metric)
    return distances.topk(k, largest=False).indices


def neighbours_farthest(vectors, queries, k, metric="euclidean"):
    distances = solution_namespace()["pairwise_distances"](vectors[queries], vectors, metric)
    distances[torch.arange(len(queries)), queries] = -float("inf")
    return distances.topk(k).indices


def neighbours_without_zero(vectors, queries, k, metric="euclidean"):
    distances = solution_namespace()["pairwise_distances"](vectors[queries], vectors, metric)
    distances[distances <= 1e-6] = float("inf")
    return distances.topk(k, largest=False).indices


def neighbours_euclidean_only(vectors, queries, k, metric="euclidean"):
    return solution_namespace()["nearest_neighbours"](vectors, queries, k)


def agreement_with_self(vectors, labels, k=10, metric="euclidean"):
    distances = solution_namespace()["pairwise_distances"](vectors, vectors, metric)
    neighbours = distances.topk(k, largest=False).indices
    return float((labels[neighbours] == labels[:, None]).float().mean())


def chance_with_replacement(labels):
    counts = torch.bincount(labels).double()
    return float(((counts / len(labels)) ** 2).sum())


def chance_one_over_classes(labels):
    return 1 / len(torch.unique(labels))


# ----------------------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_solution_passes_every_hidden_check(check: str, seed: int) -> None:
    assert run(check, solution_namespace(), seed) == []


def test_checks_and_hidden_checks_match() -> None:
    assert sorted(CHECK_FUNCTIONS) == sorted(c.replace("-", "_") for c in CHECKS)


@pytest.mark.parametrize(("check", "wrong", "message"), [
    ("check-distances", {"pairwise_distances": squared_euclidean}, "squared"),
    ("check-distances", {"pairwise_distances": cosine_similarity}, "similarities"),
    ("check-distances", {"pairwise_distances": cosine_unnormalized}, "not normalized"),
    ("check-neighbours", {"nearest_neighbours": neighbours_with_self}, "among its own neighbours"),
    ("check-neighbours", {"nearest_neighbours": neighbours_farthest}, "farthest"),
    ("check-neighbours", {"nearest_neighbours": neighbours_without_zero}, "exact copy"),
    ("check-neighbours", {"nearest_neighbours": neighbours_euclidean_only}, "pass the metric on"),
    ("check-agreement", {"knn_agreement": agreement_with_self}, "its own neighbour"),
    ("check-chance", {"chance_agreement": chance_with_replacement}, "draw itself"),
    ("check-chance", {"chance_agreement": chance_one_over_classes}, "equally common"),
])
def test_wrong_variants_fail_with_a_hint_that_names_the_mistake(check: str, wrong: dict, message: str) -> None:
    problems = run(check, solution_namespace(**wrong))
    assert problems, f"{check} passed a wrong variant"
    assert message in "\n".join(problems), problems


def test_a_function_that_raises_is_a_student_error() -> None:
    def broken(labels):
        raise NotImplementedError("chance_agreement is not written yet")

    with pytest.raises(StudentError, match="not written yet"):
        run("check-chance", solution_namespace(chance_agreement=broken))


def test_off_limits_library_calls_are_found_in_the_students_code() -> None:
    source = """import viztools.embeddings as emb

def knn_agreement(vectors, labels, k=10, metric="euclidean"):
    return emb.knn_label_agreement(vectors.numpy(), labels.numpy(), k=k)"""
    ids = {1: "setup", 2: "task-agreement"}  # the task's own cell
    found = grade.forbidden_by_task(load_key(EXERCISE), {1: "import torch", 2: source}, ids)
    assert set(found) == {"task-agreement"}
    assert all("viztools.embeddings.knn_label_agreement" in text and "code cell 2" in text for text in found.values())


@pytest.mark.slow
def test_grading_the_solution_gives_full_marks_and_the_blank_exercise_zero() -> None:
    report = grade.grade_notebook(SOLUTION)
    assert [c.id for c in report.checks] == CHECKS
    assert [c.status for c in report.checks] == ["passed"] * len(CHECKS), [c.feedback for c in report.checks]
    assert report.score == report.max_score == 8 and report.cell_problems == []
    blank = grade.grade_notebook(BLANK)
    assert blank.status == "graded" and blank.score == 0 and blank.max_score == 8
    assert all(c.status == "error" and "NotImplementedError" in c.feedback for c in blank.checks)
