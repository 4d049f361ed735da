"""Atomizer, boundary scorer, extractive compressor and rule judge."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memento.data.atomize import atomize, split
from memento.data.boundaries import apply_hard_rules, heuristic_scores
from memento.data.compress import ExtractiveCompressor
from memento.data.judge import PASS, RuleJudge


def words(texts):
    return [len(t.split()) for t in texts]


pieces = st.sampled_from(
    [
        "Let x = 3. ",
        "Then y = 4.\n\n",
        "Wait, that's wrong. ",
        "$$a = b$$ ",
        "\\( x^2 \\) ",
        "e.g. this. ",
        "```python\nx = 1. y = 2.\n```\n",
        "1. First item.\n",
        "- bullet. ",
        "(see eq. 3. and more) ",
        "3.14 is pi. ",
        "\n    indented code. here\n",
        "Therefore, ",
        "Hmm. ",
        "So z = 5.\n",
    ]
)
texts = st.lists(st.one_of(pieces, st.text(max_size=20)), max_size=25).map("".join)


@settings(max_examples=200, deadline=None)
@given(texts)
def test_atomize_is_lossless(text):
    atoms = atomize(text, words)
    assert "".join(atoms.units) == text
    assert atoms.raw_units >= len(atoms.units) >= 1


def test_protected_spans_are_never_split():
    text = (
        "We compute it. $$x = 1. y = 2.$$ Then more. ```\ncode. more code.\n``` And (this. that.) stays! "
        "Inline \\( a. b. \\) too? Pi is 3.14 here. Done."
    )
    for lines in (False, True):  # units (paragraphs cut at sentence ends), or every sentence (the compressor's)
        cuts = set(split(text, lines))
        for span in ("$$x = 1. y = 2.$$", "```\ncode. more code.\n```", "(this. that.)", "\\( a. b. \\)", "3.14"):
            a = text.index(span)
            assert not any(a < c < a + len(span) for c in cuts), span
        assert {text.index(w) for w in ("Inline", "Pi is", *(["Done"] if lines else []))} <= cuts
    assert text.index("Done") not in split(text), "a full stop between two words does not end a unit (the release)"


def test_merge_rules():
    count = words
    assert atomize("The equations are:\n\nx = 1 and y = 2 hold here now.", count, min_tokens=1).units == [
        "The equations are:\n\nx = 1 and y = 2 hold here now."
    ]
    text = "We find that $x = 3$.\nTherefore, the value is three and we move on. Next we look at y again now."
    units = atomize(text, count, min_tokens=1).units
    assert units[0].startswith("We find") and "Therefore" in units[0]
    listed = atomize("Steps follow here now.\n\n1. one thing here.\n\n2. two thing here.\n", count, min_tokens=1).units
    assert listed[-1] == "1. one thing here.\n\n2. two thing here.\n"  # list items chain
    assert atomize("Hmm. Ok. This is a longer sentence with many words in it.", count).units == [
        "Hmm. Ok. This is a longer sentence with many words in it."
    ]


def test_heuristic_scores_and_hard_rules():
    units = [
        "So x = 4.\n\n",
        "Wait, let me check that again. ",
        "We have a value:",
        "x = 5. ",
        "It is $y=2$. ",
        "Therefore, z = 3. ",
        "Alternatively, try another way.\n\n",
        "Now compute more.",
    ]
    scores = heuristic_scores(units)
    assert scores[0] == 3  # result + paragraph break + "Wait"
    assert scores[2] == 0  # after ':'
    assert scores[4] == 0  # Therefore continuing a derivation
    assert scores[5] >= 2  # "Alternatively"
    assert all(0 <= s <= 3 for s in scores)
    assert apply_hard_rules(["a =", "b"], [3.0]) == [0.0]


BLOCK = (
    "Let me set up the equation. We have 2x + 3 = 11, so 2x = 8. Hmm, let me think about this. "
    "Dividing by 2 gives x = 4. Let me check: 2*4 + 3 = 11, which is correct. "
    "I wonder whether there is another way to see it, but it does not matter much here at all. "
    "So the answer for x is 4."
)


def test_extractive_memento_respects_budget_and_block():
    comp = ExtractiveCompressor(words, ratio=0.3, max_ratio=0.5)
    [memento] = comp.compress("Solve 2x+3=11", [BLOCK])
    assert words([memento])[0] <= 0.5 * words([BLOCK])[0]
    assert re.match(r".*(= ?4|is 4)", memento.split(". ")[0])  # result first
    for sentence in re.split(r"(?<=\.) ", memento):
        assert " ".join(sentence.split()) in " ".join(BLOCK.split())  # nothing the block did not say


def test_rule_judge():
    judge = RuleJudge()
    good = "x = 4 (2x + 3 = 11, 2x = 8, x = 4); check 2*4 + 3 = 11 correct."
    verdict = judge.judge("p", BLOCK, good)
    assert verdict.score >= PASS, verdict
    bad = judge.judge("p", BLOCK, "I think we solved it. Hmm, x = 7.")
    assert bad.score < PASS and "7" in bad.feedback and bad.parts["correctness"] == 0
    assert "4" in bad.must_include


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200), st.text(max_size=80))
def test_judge_and_compressor_never_raise(block, memento):
    verdict = RuleJudge().judge("p", block, memento)
    assert 0 <= verdict.score <= 10
    ExtractiveCompressor(words).compress("p", [block])


def test_revision_follows_feedback():
    comp, judge = ExtractiveCompressor(words, ratio=0.1, max_ratio=0.6), RuleJudge()
    first = judge.judge("p", BLOCK, "x = 4.")
    revised = comp.revise("p", [BLOCK], 0, "x = 4.", first.feedback, first.must_include)
    assert judge.judge("p", BLOCK, revised).score > first.score


@pytest.mark.parametrize("text", ["", "   ", "no punctuation at all"])
def test_atomize_edge_cases(text):
    assert "".join(atomize(text, words).units) == text


def test_unclosed_fence_protects_its_line_only():
    text = "I'll write it as ```python later.\nThen we go on. Another sentence here.\n\nAnd one more."
    assert len(split(text, lines=True)) == 4  # the fence keeps only its own line whole


def test_prompt_fills_only_template_slots():
    from memento.data.llm import prompt

    text = prompt("judge", problem="p {block}", block='print(f"{count} items") {memento}', memento="M")
    assert 'print(f"{count} items") {memento}' in text and "p {block}" in text and "\nM\n" in text
