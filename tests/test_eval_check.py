"""Answer checking on known right and wrong answers, tricky equivalences and extraction failures; the tricky-case
table of docs/answer-checking.md, with the verdicts of the paper's method and of math-verify."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memento.eval.check import (
    Verdict,
    check_choice,
    check_math,
    extract_answer,
    last_boxed,
    normalize,
    same_answer,
    same_sympy,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "answer-checking.md"

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
    ("\\boxed{\\text{Monday}}", "monday"),  # see the table: equal for SymPy, by accident
]
WRONG = [("\\boxed{5}", "4"), ("\\boxed{3.14159}", "\\pi"), ("\\boxed{\\frac{1}{3}}", "0.33")]

# The table of docs/answer-checking.md: reference, completion, verdict of the paper's method, verdict of math-verify
# on the same extracted answer, comment. Kept equal to the document by `test_the_document_lists_this_table`.
CASES = [
    ("5", r"\boxed{5 \text{ cm}}", "correct", "correct", r"a unit in `\text{}` after a number is dropped"),
    ("5", r"\boxed{5 cm}", "wrong", "correct", r"a bare unit (no `\text{}`) stays; math-verify drops it"),
    ("30", r"\boxed{30^\circ}", "correct", "correct", "the degree sign is dropped"),
    (r"\frac{\pi}{6}", r"\boxed{30^\circ}", "wrong", "wrong", "degrees are not converted to radians"),
    ("(0,1]", r"\boxed{(0, 1]}", "correct", "correct", "spaces do not count"),
    ("(0,1)", r"\boxed{[0,1]}", "wrong", "wrong", "closed is not open"),
    ("(0,1]", r"\boxed{x \in (0,1]}", "wrong", "correct", r"only a short `x =` is dropped, not `x \in`"),
    (r"\{1, 2\}", r"\boxed{\{2, 1\}}", "correct", "correct", "strings differ; SymPy sets ignore order"),
    (r"\dfrac{1}{2}", r"\boxed{\frac12}", "correct", "correct", r"`\dfrac` and `\frac12` are normalised"),
    (r"\dfrac{1}{2}", r"\boxed{0.5}", "correct", "correct", "SymPy: 0.5 - 1/2 simplifies to 0"),
    (r"\frac{1}{3}", r"\boxed{0.333}", "wrong", "wrong", "no numeric tolerance"),
    ("3", r"\boxed{x = 3}", "correct", "correct", "a short left side is dropped"),
    ("3", r"\boxed{f(x) = 3}", "wrong", "correct", "a longer left side is kept; math-verify drops it"),
    (
        "(2, 3)",
        r"\boxed{x = 2, y = 3}",
        "wrong",
        "correct",
        "math-verify matches the equations' right sides to the pair",
    ),
    ("1000", r"\boxed{1,000}", "correct", "correct", "thousands separator"),
    ("1000", r"\boxed{1{,}000}", "correct", "correct", "LaTeX thousands separator"),
    ("10", r"\boxed{10\%}", "correct", "correct", "the percent sign is dropped"),
    ("0.1", r"\boxed{10\%}", "wrong", "correct", "dropping `%` makes it 10; math-verify reads 10% as 0.1"),
    ("2", r"\boxed{2.}", "correct", "wrong", "a trailing period is dropped; math-verify cannot read `2.` as a number"),
    ("4", r"first \boxed{3}, corrected: \boxed{4}", "correct", "correct", "the last box counts"),
    ("3", r"first \boxed{3}, corrected: \boxed{4}", "wrong", "wrong", "an earlier box does not"),
    (r"\frac{\sqrt{2}}{2}", r"\boxed{\sqrt{2}/2}", "correct", "correct", "SymPy"),
    (r"\frac{\sqrt{2}}{2}", r"\boxed{0.7071}", "wrong", "wrong", "a rounded value is not equal"),
    ("x^2+2x+1", r"\boxed{(x+1)^2}", "correct", "correct", "SymPy: the difference simplifies to 0"),
    ("12", r"Final Answer: The final answer is $12$. I hope it is correct.", "correct", "correct", "no box"),
    ("12", r"**Final Answer** 12", "correct", "correct", "no box, Markdown heading"),
    (r"\frac{3}{4}", r"so $x = 2$ and the probability is $\frac{3}{4}$.", "correct", "correct", "the last `$...$`"),
    ("42", r"</think> 42", "correct", "correct", "a short last line is the answer"),
    ("4", r"<think>\boxed{4}</think> the answer is 4", "wrong", "wrong", "the reasoning's box does not count"),
    ("4", r"The answer is \boxed{4", "no_answer", "no_answer", "a box never closed: cut off"),
    ("4", r"\boxed{5}", "wrong", "wrong", "a wrong answer"),
    (r"\pi", r"\boxed{3.14159}", "wrong", "wrong", "a rounded value is not equal"),
    ("monday", r"\boxed{\text{Monday}}", "correct", "correct", "SymPy reads both words as d*a*m*n*o*y: luck"),
    (
        r"\text{east}",
        r"\boxed{\text{East}}",
        "wrong",
        "correct",
        "strings are case-sensitive; math-verify lowercases text",
    ),
]


def math_verify_outcome(verdict: Verdict) -> str:
    return "no_answer" if verdict.answer is None else "correct" if verdict.math_verify else "wrong"


def markdown_table() -> str:
    rows = ["| reference | model answer | paper | math-verify | comment |", "|---|---|---|---|---|"]
    rows += [f"| `{ref}` | `{completion}` | {paper} | {mv} | {note} |" for ref, completion, paper, mv, note in CASES]
    return "\n".join(rows)


@pytest.mark.parametrize(("reference", "completion", "paper", "math_verify", "comment"), CASES)
def test_tricky_cases(reference, completion, paper, math_verify, comment):
    verdict = check_math(completion, reference)
    assert (verdict.outcome, math_verify_outcome(verdict)) == (paper, math_verify), verdict


def test_the_document_lists_this_table():
    assert markdown_table() in DOC.read_text(), f"update the table of {DOC.name}; it should read:\n{markdown_table()}"


@pytest.mark.parametrize(("completion", "reference"), RIGHT)
def test_equivalent_answers_are_right(completion, reference):
    verdict = check_math(f"<think>work</think>\n{completion}", reference)
    assert verdict.outcome == "correct", verdict


@pytest.mark.parametrize(("completion", "reference"), WRONG)
def test_different_answers_are_wrong(completion, reference):
    assert check_math(completion, reference).outcome == "wrong"


def test_extraction_failures_are_not_wrong_answers():
    assert check_math("<think>it is 4, so \\boxed{4}", "4").outcome == "correct"  # no </think>: the whole text
    boxed_in_reasoning = check_math("<think>\\boxed{4}</think> the answer is 4", "4")  # the box does not count
    assert (boxed_in_reasoning.answer, boxed_in_reasoning.outcome) == ("the answer is 4", "wrong")  # a short line
    assert check_math("<think>\\boxed{4}</think> I could not decide which of the two it is.", "4").answer is None
    assert check_math("The answer is \\boxed{4", "4").outcome == "no_answer"  # truncated
    assert check_math("", "4").answer is None
    assert check_math("", "4").math_verify is None


def test_the_last_boxed_answer_counts():
    assert check_math("first \\boxed{3}, corrected: \\boxed{4}", "4").outcome == "correct"
    assert check_math("\\boxed{\\frac{a}{b^{2}}}", "\\frac{a}{b^2}").answer == "\\frac{a}{b^{2}}"


def test_extraction_order():
    assert extract_answer("Final Answer: $3$. So \\boxed{4}") == "4"  # a box first
    assert extract_answer("$x = 2$. Final Answer: The final answer is $3$. I hope it is correct.") == "3"
    assert extract_answer("### Final Answer\n\n\\[ 7 \\]") == "7"
    assert extract_answer("we find $y$ and then $\\frac{1}{2}$ is it") == "\\frac{1}{2}"
    assert extract_answer("a long last line, with no maths in it at all, is no answer") is None


def test_hendrycks_normalisation():
    assert normalize("\\left( \\dfrac12, \\sqrt2 \\right)") == "(\\frac{1}{2},\\sqrt{2})"
    assert normalize("k = .5") == normalize("0.5") == "0.5"
    assert normalize("\\$1{,}000.") == normalize("1,000") == "1000"
    assert normalize("45^{\\circ}") == normalize("45^\\circ") == "45"
    assert normalize("3/4") == "\\frac{3}{4}"
    assert normalize("(0,100)") == "(0,100)"  # not a thousands separator
    assert normalize("3 \\text{ and } 4") == "3and4"  # a unit only at the end
    assert normalize("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}") == "\\begin{pmatrix}1\\\\2\\end{pmatrix}"


SLOW = ("9^{9^{9}}", "3")  # simplify(9**(9**9) - 3) computes a 370-million-digit number: over 30 s


def test_a_hanging_sympy_comparison_times_out():
    assert same_sympy("1", "2") is False  # the worker is started (not counted in the timeout)
    start = time.monotonic()
    assert same_sympy(*SLOW, timeout=1.0) is False
    assert time.monotonic() - start < 4
    assert same_sympy("\\frac{1}{2}", "0.5")  # a fresh worker after the kill


def test_the_timeout_works_outside_the_main_thread():
    result = {}

    def compare():
        start = time.monotonic()
        result["equal"] = same_answer(*SLOW, timeout=0.5)
        result["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=compare)
    thread.start()
    thread.join(timeout=30)
    assert result["equal"] is False
    assert result["seconds"] < 10  # (includes starting a worker when an earlier test killed it)


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
