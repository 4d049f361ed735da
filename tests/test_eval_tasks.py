"""The offline tasks of `memento eval`: CHAMP and reasoning-gym problems, and their checkers on known answers."""

from __future__ import annotations

import itertools

import pytest

from memento.core.errors import MementoError
from memento.eval.tasks import get


@pytest.fixture(scope="module")
def champ():
    task = get("champ")
    return task, task.problems()


def test_champ_has_its_270_problems_and_accepts_each_reference(champ):
    task, problems = champ
    assert len(problems) == 270 and len({p.id for p in problems}) == 270
    assert all("\\boxed{}" in p.prompt for p in problems)
    assert all(task.check(p, f"<think>...</think>\\boxed{{{p.reference}}}").correct for p in problems)


def test_champ_rejects_the_answer_of_another_problem(champ):
    task, problems = champ
    pairs = [(p, q) for p, q in itertools.pairwise(problems) if p.reference != q.reference]
    right = sum(task.check(p, f"\\boxed{{{q.reference}}}").correct for p, q in pairs)
    assert right <= len(pairs) // 20  # a few references coincide in value ("0" vs "0 is the only possible value")


@pytest.mark.parametrize(
    ("reference", "answer"),
    [
        ("0 is the only possible value", "0"),
        ("98 values", "98"),
        ("sum_(i=1)^n i^2, or equivalently n(n+1)(2n+1)/6", "\\frac{n(n+1)(2n+1)}{6}"),
        ("n(n+1)*2^(n-2)", "n(n+1)2^{n-2}"),
        ("No", "no"),
    ],
)
def test_champ_reads_free_form_references(champ, reference, answer):
    task, problems = champ
    (problem,) = [p for p in problems if p.reference == reference][:1]
    assert task.check(problem, f"\\boxed{{{answer}}}").outcome == "correct"


def test_reasoning_gym_task_uses_the_generators_verifier():
    task = get("gym:basic_arithmetic")
    problems = task.problems()
    assert len(problems) == 100 and task.name == "gym:basic_arithmetic"
    p = problems[0]
    assert task.check(p, f"</think>\\boxed{{{p.reference}}}").outcome == "correct"
    assert task.check(p, "</think>\\boxed{not a number}").outcome == "wrong"
    assert task.check(p, "</think>I could not finish").outcome == "no_answer"
    assert [q.prompt for q in get("gym:basic_arithmetic").problems()] == [q.prompt for q in problems]  # reproducible


def test_unknown_tasks_are_named_in_the_error():
    with pytest.raises(MementoError, match="unknown"):
        get("aime2099")
    with pytest.raises(MementoError, match="no_such_generator"):
        get("gym:no_such_generator").problems()
