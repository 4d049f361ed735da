"""Scoring toy generations through `memento eval`: boxed answers, well-formedness, KV per problem, and the intervals
the report prints."""

from __future__ import annotations

import math

import pytest

from memento.core.chat import encode_chat, label_trace
from memento.core.format import render, render_plain
from memento.core.intervals import paired_difference, wilson
from memento.core.kv import KVGeometry, replay
from memento.core.policy import EvictionPolicy
from memento.engine.generate import ReferenceEngine
from memento.eval import run
from memento.eval.backends import sample_of
from memento.eval.check import last_boxed as boxed
from memento.eval.settings import EvalSettings
from memento.eval.tasks import Problem, get
from memento.synthetic.orbit import orbit_traces
from memento.toy.evaluate import evaluate, score

POLICY = EvictionPolicy(0, mask_delimiters=True)


def test_boxed_and_intervals():
    assert boxed("so \\boxed{3} then \\boxed{ 7 }<|im_end|>") == "7"
    assert boxed("no answer") is None
    lo, hi = wilson(50, 100)
    assert lo < 0.5 < hi and math.isclose(lo + hi, 1.0, abs_tol=1e-9) and hi - lo < 0.2
    assert wilson(0, 20)[0] == 0.0 and wilson(20, 20)[1] == 1.0
    d = paired_difference([True] * 30 + [False] * 10, [True] * 20 + [False] * 20)
    assert d.delta == 0.25 and d.only_a == 10 and d.only_b == 0 and d.ci[0] > 0


@pytest.mark.parametrize("plain", [False, True])
def test_reference_completions_score_perfectly(chars, char_llama, plain):
    """Forcing the reference solutions through the engine: every answer right, every output well formed, and the
    KV per problem equal to the token-replay simulator's."""
    traces = orbit_traces(4, seed=5, rounds=3, steps=4)
    render_fn = render_plain if plain else render
    forced = []
    for t in traces:
        encoded = encode_chat(chars, t.problem, render_fn(t))
        forced.append(encoded.ids[encoded.completion_start :])
    policy = EvictionPolicy(-1) if plain else POLICY
    engine = ReferenceEngine(char_llama, chars, policy)
    generations = engine.generate([t.problem for t in traces], force=forced, batch_size=3)
    task = get("toy:orbit")
    problems = [Problem(str(i), t.problem, boxed(t.answer)) for i, t in enumerate(traces)]
    samples = [sample_of(g, engine.special) for g in generations]
    records = [run.record(task, p, 0, 0, s) for p, s in zip(problems, samples, strict=True)]
    summary = run.summarize(records, EvalSettings("chars-llama", "toy:orbit", policy=policy))
    scores = score(summary | {"seconds_now": 1.0}, records, plain=plain)
    assert scores.correct == [True] * 4 and scores.accuracy == 1.0 and scores.well_formed == 1.0
    geometry = KVGeometry("toy", 2, 2, 8)
    peaks = [replay(label_trace(t, chars, plain).spans, policy, geometry).peak_tokens for t in traces]
    assert scores.peak_kv_tokens == sum(peaks) / 4
    assert scores.tokens_per_s == sum(len(f) for f in forced)


def test_evaluate_generates_and_scores_every_problem(chars, char_llama, tmp_path):
    char_llama.save_pretrained(tmp_path / "model")
    chars.save_pretrained(tmp_path / "model")
    scores = evaluate(
        tmp_path / "model", "orbit", POLICY, tmp_path / "run", problems=3, batch_size=2, max_new_tokens=40
    )
    assert scores.n == 3 and len(scores.correct) == 3 and len(run.read_records(tmp_path / "run")) == 3
    assert scores.generated_tokens == 40, "an untrained model runs to the length limit"
    prompts = [p.prompt for p in get("toy:orbit").problems()[:3]]
    assert 0 < scores.peak_kv_tokens <= 40 + max(len(encode_chat(chars, p).ids) for p in prompts)
