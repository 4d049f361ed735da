from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memento.core.errors import MementoError, TraceFormatError
from memento.core.format import SPECIAL_TOKENS, Block, Trace, parse, recover, render

# Arbitrary unicode, plus the things real traces contain: code fences, LaTeX, newlines, angle brackets.
pieces = st.sampled_from(["```python\nprint('x')\n```", "\\[ x^2 \\]", "$$a$$", "\n\n", "<|im_end|>", "<", "|>", " "])
text = (
    st.lists(st.one_of(st.text(max_size=30), pieces), max_size=6)
    .map("".join)
    .filter(lambda s: not any(t in s for t in SPECIAL_TOKENS))
)
traces = st.builds(
    Trace,
    problem=text,
    blocks=st.lists(st.builds(Block, text=text, memento=text), max_size=5),
    answer=text,
)


@settings(max_examples=300, deadline=None)
@given(traces)
def test_parse_render_roundtrip(trace):
    assert parse(render(trace), trace.problem) == trace


@settings(max_examples=200, deadline=None)
@given(traces)
def test_recover_is_lossless_on_well_formed_text(trace):
    recovered = recover(render(trace), trace.problem)
    assert recovered.trace == trace
    assert recovered.dropped == []


def test_render_is_the_token_format():
    trace = Trace("p", [Block("b1", "m1"), Block("b2", "m2")], "A")
    assert render(trace) == (
        "<think>\n<|block_start|>b1<|block_end|>\n<|summary_start|>m1<|summary_end|>\n"
        "<|block_start|>b2<|block_end|>\n<|summary_start|>m2<|summary_end|>\n</think>\n\nA"
    )


def test_parse_accepts_any_whitespace_between_structure():
    text = "  <think> <|block_start|>b<|block_end|>\n\n <|summary_start|>m<|summary_end|>\t</think>\n\nA"
    assert parse(text) == Trace("", [Block("b", "m")], "A")


def test_render_refuses_special_tokens_inside_text():
    with pytest.raises(MementoError, match="block 1 memento contains the special token <\\|block_end\\|>"):
        render(Trace("p", [Block("ok", "bad <|block_end|>")], "A"))


GOOD = "<think>\n<|block_start|>b<|block_end|>\n<|summary_start|>m<|summary_end|>\n</think>\n\nA"


@pytest.mark.parametrize(
    ("text", "reason", "offset"),
    [
        ("<think><|block_start|>b</think>A", "unclosed block: </think> before <|block_end|>", 23),
        ("<think><|block_start|>b", "unclosed block at end of text", 7),
        ("<think><|summary_start|>m<|summary_end|></think>A", "memento with no block", 7),
        ("<think><|block_start|>b<|block_end|></think>A", "block with no memento: </think> after <|block_end|>", 36),
        ("<think><|block_start|>a<|block_start|>b", "nested <|block_start|> inside an open block", 23),
        (
            "<think><|block_start|>b<|block_end|><|summary_start|>m<|summary_end|> oops </think>A",
            "stray text between blocks",
            70,
        ),
        ("<think><|block_start|>b<|block_end|><|summary_start|>m<|summary_end|>", "missing </think>", 69),
        ("intro <think></think>A", "stray text before <think>", 0),
        ("<think></think>A<|block_start|>", "<|block_start|> after </think>", 16),
        ("<think><|block_end|></think>", "<|block_end|> with no open block", 7),
        ("<think><|block_start|>b<|block_end|><|summary_start|>m</think>", "unclosed memento: </think> before", 54),
        ("", "missing <think>", 0),
    ],
)
def test_malformed_input_names_problem_and_offset(text, reason, offset):
    with pytest.raises(TraceFormatError) as info:
        parse(text)
    assert info.value.reason.startswith(reason)
    assert info.value.offset == offset
    assert f"at character {offset}" in str(info.value)


def test_recover_keeps_complete_pairs_and_reports_drops():
    text = (
        "<think><|block_start|>one<|block_end|><|summary_start|>m1<|summary_end|>"
        "stray"  # dropped: stray text
        "<|block_start|>two<|block_end|>"  # dropped: block with no memento
        "<|block_start|>three<|block_end|><|summary_start|>m3<|summary_end|>"
        "<|summary_start|>orphan<|summary_end|>"  # dropped: memento with no block
        "<|block_start|>unclosed</think>Final"  # dropped: unclosed block, </think> still read
    )
    trace, dropped = recover(text)
    assert trace.blocks == [Block("one", "m1"), Block("three", "m3")]
    assert trace.answer == "Final"
    reasons = [d.reason.split(":")[0] for d in dropped]
    assert reasons == ["stray text between blocks", "block with no memento", "memento with no block", "unclosed block"]
    assert [d.text for d in dropped] == ["stray", "two", "orphan", "unclosed"]
    assert text[dropped[1].offset :].startswith("<|block_start|>two")


def test_recover_without_think_end_keeps_blocks():
    trace, dropped = recover("<think><|block_start|>b<|block_end|><|summary_start|>m<|summary_end|><|block_start|>x")
    assert trace.blocks == [Block("b", "m")]
    assert trace.answer == ""
    assert [d.reason for d in dropped] == ["unclosed block at end of text", "missing </think>"]


def test_good_text_parses():
    assert parse(GOOD).blocks == [Block("b", "m")]
