from __future__ import annotations

import unicodedata

import numpy as np
import pytest
from helpers import small_trace
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_format import traces

from memento.core.chat import encode_chat, label_trace, memento_ids
from memento.core.errors import TraceFormatError
from memento.core.format import render
from memento.core.spans import Kind, label

fixture_ok = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def test_labels_of_a_chat(qwen):
    trace = small_trace(2)
    enc, spans = label_trace(trace, qwen)
    tokens = qwen.convert_ids_to_tokens(enc.ids)
    kinds = [Kind(k) for k in spans.kind]
    assert tokens[enc.completion_start] == "<think>"
    assert set(kinds[: enc.completion_start]) == {Kind.PROMPT}
    assert kinds[enc.completion_start] == Kind.THINK_START
    first_block = tokens.index("<|block_start|>")
    assert kinds[first_block] == Kind.BLOCK_START and spans.block[first_block] == 0
    assert spans.n_blocks == 2 and spans.complete
    # the newline after <|block_end|> lives with the delimiter
    end = tokens.index("<|block_end|>")
    assert kinds[end : end + 3] == [Kind.BLOCK_END, Kind.BLOCK_END, Kind.SUMMARY_START]
    assert kinds[-1] == Kind.ANSWER and tokens[-2] == "<|im_end|>"


@fixture_ok
@given(trace=traces, cuts=st.lists(st.floats(0, 1), min_size=1, max_size=4))
def test_labels_match_the_trace_and_every_prefix(qwen, trace, cuts):
    enc, spans = label_trace(trace, qwen)
    assert spans.n_blocks == len(trace.blocks) and spans.complete
    for i, block in enumerate(trace.blocks):
        for kind, text in ((Kind.BLOCK, block.text), (Kind.SUMMARY, block.memento)):
            got = qwen.decode(np.asarray(enc.ids)[(spans.kind == kind) & (spans.block == i)])
            assert got == unicodedata.normalize("NFC", text)
    ids = memento_ids(qwen)
    for cut in cuts:  # a prefix still being generated is labelled exactly like the finished sequence
        k = enc.completion_start + int(cut * (len(enc.ids) - enc.completion_start))
        prefix = label(enc.ids[:k], ids, enc.completion_start)
        assert np.array_equal(prefix.kind, spans.kind[:k]) and np.array_equal(prefix.block, spans.block[:k])


def test_default_start_is_last_think_so_earlier_turns_are_prompt(qwen):
    ids = memento_ids(qwen)
    first = encode_chat(qwen, "q1", render(small_trace(1))).ids
    second = encode_chat(qwen, "q2", render(small_trace(2)))
    spans = label(first + second.ids, ids)
    assert set(spans.kind[: len(first) + second.completion_start]) == {Kind.PROMPT}
    assert spans.n_blocks == 2


def test_generation_prefix_reports_open_state(qwen):
    enc = encode_chat(qwen, "q", render(small_trace(2)))
    ids = memento_ids(qwen)
    cut = enc.ids.index(ids.block_end)
    spans = label(enc.ids[:cut], ids)
    assert spans.state.name == "BLOCK" and not spans.complete and spans.n_blocks == 1


def test_padding_left_and_right(qwen):
    enc = encode_chat(qwen, "q", render(small_trace(2)))
    ids = memento_ids(qwen)
    ref = label(enc.ids, ids, enc.completion_start)
    pad = qwen.pad_token_id
    left = label([pad] * 3 + enc.ids, ids, enc.completion_start + 3, attention_mask=[0] * 3 + [1] * len(enc.ids))
    right = label(enc.ids + [pad] * 2, ids, attention_mask=[1] * len(enc.ids) + [0, 0])
    assert list(left.kind[:3]) == [Kind.PAD] * 3 and np.array_equal(left.kind[3:], ref.kind)
    assert list(right.kind[-2:]) == [Kind.PAD] * 2 and np.array_equal(right.kind[:-2], ref.kind)


def test_strict_error_names_token_index_and_lenient_goes_on(qwen):
    ids = memento_ids(qwen)
    seq = [ids.think_start, ids.block_start, 100, ids.summary_start, 101, ids.block_end]
    with pytest.raises(
        TraceFormatError, match=r"unclosed block: <\|summary_start\|> before <\|block_end\|> \(at token 3\)"
    ):
        label(seq, ids)
    spans = label(seq, ids, strict=False)
    assert [i.index for i in spans.issues] == [3]
    assert spans.kind[3] == Kind.BLOCK and spans.kind[5] == Kind.BLOCK_END


def test_counts_and_firsts(qwen):
    trace = small_trace(3)
    enc, spans = label_trace(trace, qwen)
    lengths = [len(qwen.encode(b.text, add_special_tokens=False)) for b in trace.blocks]
    assert spans.count(Kind.BLOCK).tolist() == lengths
    firsts = spans.first(Kind.SUMMARY_END)
    assert [enc.ids[i] for i in firsts] == [memento_ids(qwen).summary_end] * 3
