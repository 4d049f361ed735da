"""Answer checking on known right and wrong answers, tricky equivalences and extraction failures."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memento.eval.check import check_choice, check_math, last_boxed

RIGHT = [
    ("\\boxed{0.5}", "1/2"),
    ("\\boxed{\\frac{1}{2}}", "0.5"),
    ("\\boxed{\\dfrac12}", "\\frac{1}{2}"),
    ("so $x = \\boxed{3}$.", "3"),
    ("\\boxed{x=3}", "3"),
    ("\\boxed{(x+1)^2}", "x^2+2x+1"),
    ("\\boxed{\\{2, 1\\}}", "\\{1,2\\}"),
    ("\\boxed{1,000}", "1000"),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"),
    ("\\boxed{\\text{Monday}}", "monday"),  # not maths: compared as normalised text
]
WRONG = [("\\boxed{5}", "4"), ("\\boxed{3.14159}", "\\pi"), ("\\boxed{\\frac{1}{3}}", "0.33")]


@pytest.mark.parametrize(("completion", "reference"), RIGHT)
def test_equivalent_answers_are_right(completion, reference):
    verdict = check_math(f"<think>work</think>\n{completion}", reference)
    assert verdict.outcome == "correct", verdict


@pytest.mark.parametrize(("completion", "reference"), WRONG)
def test_different_answers_are_wrong(completion, reference):
    assert check_math(completion, reference).outcome == "wrong"


def test_extraction_failures_are_not_wrong_answers():
    assert check_math("<think>it is 4, so \\boxed{4}", "4").outcome == "correct"  # no </think>: the whole text
    assert check_math("<think>\\boxed{4}</think> the answer is 4", "4").outcome == "no_answer"  # boxed in reasoning
    assert check_math("The answer is \\boxed{4", "4").outcome == "no_answer"  # truncated
    assert check_math("", "4").answer is None


def test_the_last_boxed_answer_counts():
    assert check_math("first \\boxed{3}, corrected: \\boxed{4}", "4").outcome == "correct"
    assert check_math("\\boxed{\\frac{a}{b^{2}}}", "\\frac{a}{b^2}").answer == "\\frac{a}{b^{2}}"


def test_multiple_choice_letters():
    assert check_choice("</think>The answer is (C).", "C").outcome == "correct"
    assert check_choice("</think>Answer: b", "B").outcome == "correct"
    assert check_choice("</think>\\boxed{\\text{(D)}}", "A").outcome == "wrong"
    assert check_choice("</think>\\boxed{E}", "A").outcome == "no_answer"  # not an option
    assert check_choice("</think>I think it is probably right", "A").outcome == "no_answer"
    assert check_choice("</think>The answer is A. On reflection the answer is (B)", "B").answer == "B"


balanced = st.recursive(
    st.text(alphabet="abc123+-=^_ \\", max_size=8),
    lambda inner: st.builds(lambda a, b: f"{a}{{{b}}}", inner, inner),
    max_leaves=6,
)


@given(before=st.text(alphabet="xyz {}.", max_size=20), content=balanced, after=st.text(alphabet="xyz .", max_size=20))
def test_last_boxed_returns_the_balanced_content(before, content, after):
    assert last_boxed(f"{before}\\boxed{{{content}}}{after}") == content.strip()
