"""Toy tasks: well-formed Memento traces whose reasoning is right, the Control format, and the KV savings built in."""

from __future__ import annotations

import re

import numpy as np
import pytest

from memento.core.chat import label_trace
from memento.core.errors import MementoError
from memento.core.format import parse, render, render_plain
from memento.core.kv import KVGeometry, replay
from memento.core.policy import EvictionPolicy
from memento.core.spans import Kind
from memento.synthetic.digits import digits_traces
from memento.synthetic.orbit import orbit_traces, with_note
from memento.synthetic.tasks import from_spec

TOY_POLICY = EvictionPolicy(0, mask_delimiters=True)


def test_orbit_reasoning_shows_correct_work():
    letters = "ABCDEFGHIJ"
    for trace in orbit_traces(50, seed=3):
        a, letter, d, x = re.fullmatch(r"f:(\d)x\+([A-J]) d(\d) x=(\d)", trace.problem).groups()
        a, k, d, x = int(a), letters.index(letter), int(d), int(x)
        assert a in (1, 3, 7, 9) and d > 0
        assert parse(render(trace), trace.problem).blocks == trace.blocks
        k = (k + d) % 10
        assert trace.blocks[0].text == trace.problem and trace.blocks[0].memento == f"0:{a}{letters[k]}{d}{x}"
        for r, block in enumerate(trace.blocks[1:], 1):
            head, *steps = block.text.split(" ")
            assert head == f"{r}:{a}{letters[k]}{d}"
            steps = [s for s in steps if not s.startswith("p")]
            assert [s[0] for s in steps] == list("abcdef")
            for s in steps:
                assert s[1:] == f"{x}*{a}>{a * x % 10}+{letters[k]}>{(a * x + k) % 10}", f"step {s} from state {x}"
                x = (a * x + k) % 10
            k = (k + d) % 10
            assert block.memento == f"{r}:{a}{letters[k]}{d}{x}"
        assert len(trace.blocks) == 10 and trace.answer == f"\\boxed{{{x}}}"


def test_orbit_shown_drift_writes_the_next_offset_as_a_step_and_changes_nothing_else():
    """`shown=1` (the RL variant's traces): each block ends with the drift's sum, d + offset -> the next offset, the
    letter its memento then carries; mementos, answers and problems are those of the plain traces."""
    letters = "ABCDEFGHIJ"
    plain = orbit_traces(30, seed=4, rounds=3, steps=3, split="test")
    shown = from_spec("toy:orbit?n=30&seed=4&rounds=3&steps=3&split=test&shown=1")
    for p, s in zip(plain, shown, strict=True):
        assert (p.problem, p.answer, [b.memento for b in p.blocks]) == (
            s.problem,
            s.answer,
            [b.memento for b in s.blocks],
        )
        for pb, sb in zip(p.blocks, s.blocks, strict=True):
            head, work = sb.text.rsplit(" ", 1)
            assert head == pb.text
            d, letter, new = re.fullmatch(r"=(\d)\+([A-J])>(\d)", work).groups()
            assert int(new) == (letters.index(letter) + int(d)) % 10 and sb.memento[3] == letters[int(new)]


def test_orbit_scores_only_problems_it_never_trains_on():
    key = lambda t: t.problem  # noqa: E731  (the problem text is the (a, k, d, x) key)
    train = {key(t) for t in orbit_traces(20_000, seed=0)}
    test = [key(t) for t in orbit_traces(1_000, seed=1, split="test")]
    assert 3200 < len(train) <= 3240, "training problems are drawn with replacement"
    assert len(set(test[:360])) == 360 and len(set(test[360:720])) == 360 and len(set(test)) == 360, "test: passes"
    assert not train & set(test)
    assert orbit_traces(5, seed=2, split="test") == orbit_traces(5, seed=2, split="test")
    finals = {t.answer for t in orbit_traces(2_000, seed=1, split="test")}
    assert len(finals) == 10


def test_orbit_notes_and_the_probe_injection():
    traces = orbit_traces(400, seed=0, notes=0.5)
    with_notes = sum(bool(re.search(r" p\d", render(t))) for t in traces)
    assert 150 < with_notes < 250
    assert all(render(t).count(" p") <= 1 for t in traces)
    injected = with_note(traces[0], block=2, digit=7)
    assert injected.blocks[2].text.split(" ")[1] == "p7" and injected.blocks[2].text.startswith("2:")
    assert sum(" p" in b.text for b in injected.blocks) == 1
    assert [b.memento for b in injected.blocks] == [b.memento for b in traces[0].blocks]


def test_digits_is_the_papers_toy():
    trace = digits_traces(1, seed=0)[0]
    groups = trace.problem.split(" ")
    assert len(groups) == 10 and all(len(g) == 5 for g in groups)
    assert [b.text for b in trace.blocks] == groups
    sums = np.cumsum([sum(map(int, g)) for g in groups])
    assert [b.memento for b in trace.blocks] == [f"{s:03d}" for s in sums]
    assert trace.answer == f"\\boxed{{{sums[-1]}}}"


def test_orbit_cuts_peak_kv_by_more_than_3x_and_digits_barely(chars):
    """By design: the Memento model's peak KV under eviction vs the Control's plain chain of thought (the paper's
    toy saves nothing against it: its mementos are as long as its blocks)."""
    geometry = KVGeometry("toy", layers=4, kv_heads=4, head_dim=32)
    for traces, low, high in ((orbit_traces(20, seed=1), 3.2, 4.5), (digits_traces(20, seed=1), 0.9, 1.1)):
        ratios = []
        for trace in traces:
            memento = label_trace(trace, chars)
            control = label_trace(trace, chars, plain=True)
            full = replay(control.spans, EvictionPolicy(-1), geometry).peak_tokens
            evicted = replay(memento.spans, TOY_POLICY, geometry).peak_tokens
            ratios.append(full / evicted)
        assert low < np.mean(ratios) < high


def test_plain_format_has_no_memento_tokens(chars):
    trace = orbit_traces(1, seed=2)[0]
    text = render_plain(trace)
    assert "<|block_start|>" not in text and "<|summary_start|>" not in text
    assert text.startswith("<think>\n" + trace.problem + "\n1:")
    assert text.endswith("</think>\n\n" + trace.answer)
    labelled = label_trace(trace, chars, plain=True)
    assert labelled.spans.n_blocks == 0 and Kind.ANSWER in labelled.spans.kind


def test_specs():
    assert len(from_spec("toy:orbit?n=3&seed=1&notes=0.0")) == 3
    assert len(from_spec("toy:digits?n=2&blocks=4")[0].blocks) == 4
    with pytest.raises(MementoError, match="unknown toy task 'nope'"):
        from_spec("toy:nope")
    with pytest.raises(MementoError, match="bad parameters"):
        from_spec("toy:orbit?rounds=12")
    with pytest.raises(MementoError, match="split must be train or test"):
        from_spec("toy:orbit?split=dev")
