"""The leakage probe: its features are exactly the KV the reference engine holds, and its MLP reads what is there
and nothing that is not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memento.core.chat import label_trace, memento_ids
from memento.core.format import Trace
from memento.core.policy import EvictionPolicy
from memento.engine.reference import teacher_force
from memento.probe.leakage import MEMENTO_KINDS, ProbeConfig, fit_probes, memento_features, split
from memento.synthetic.orbit import orbit_traces, with_note


@pytest.mark.parametrize("policy", [EvictionPolicy(0, mask_delimiters=True), EvictionPolicy(0, restart=True)])
def test_features_are_the_engines_cache(chars, char_llama, policy):
    traces = [with_note(t, 1, d) for d, t in enumerate(orbit_traces(3, seed=4, rounds=4, steps=3))]
    # longest first: the features run shortest first, in batches of other traces, and come back in this order
    traces = [Trace(t.problem + "x" * 3 * (2 - d), t.blocks, t.answer) for d, t in enumerate(traces)]
    features = memento_features(char_llama, chars, traces, policy, batch_size=2)
    assert features.shape == (3, 2, 5, 2 * 2 * 8)
    for i, trace in enumerate(traces):
        encoded, spans = label_trace(trace, chars)
        cache = teacher_force(char_llama, memento_ids(chars), policy, encoded.ids, encoded.completion_start)[1].cache
        for j in range(5):
            tokens = np.flatnonzero(np.isin(spans.kind, MEMENTO_KINDS) & (spans.block == j))
            slots = torch.isin(cache.index[0], torch.from_numpy(tokens))
            assert int(slots.sum()) == len(tokens), "mementos are never evicted"
            for layer in range(2):
                kv = torch.cat([cache.kv.layers[layer].keys[0], cache.kv.layers[layer].values[0]])[:, slots]
                want = kv.mean(1).flatten().numpy()
                assert np.allclose(features[i, layer, j], want, atol=1e-5)


def test_the_probe_reads_a_signal_and_finds_none_in_noise():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 1500)
    noise = rng.normal(size=(1500, 2, 24))
    noise[:, 0, :10] += 3.0 * np.eye(10)[labels]  # group 0 carries the label, group 1 does not
    correct, n_test = fit_probes(noise.astype(np.float32), labels, ProbeConfig(epochs=150))
    assert n_test == 450
    assert correct[0] / n_test > 0.7
    assert abs(correct[1] / n_test - 0.1) < 0.05


def test_rows_of_one_problem_stay_on_one_side_of_the_split():
    """A problem seen in training with its digit must not be scored again: features that only identify the problem
    (repeated rows, one digit per problem) are memorised by a row split but read at chance by the problem split."""
    rng = np.random.default_rng(1)
    problems = np.repeat(np.arange(100), 10)  # 100 problems, 10 rows each, one digit per problem
    labels = rng.integers(0, 10, 100)[problems]
    features = (np.eye(100)[problems] + 0.01 * rng.normal(size=(1000, 100)))[:, None].astype(np.float32)
    config = ProbeConfig(epochs=150)
    by_row, n_row = fit_probes(features, labels, config)
    by_problem, n_problem = fit_probes(features, labels, config, groups=[f"p{p}" for p in problems])
    assert by_row[0] / n_row > 0.9, "a row split lets the probe recognise problems"
    assert by_problem[0] / n_problem < 0.25 and n_problem == 300
    train, test = split(1000, 0.7, 0, groups=problems.tolist())
    assert not set(problems[train.numpy()]) & set(problems[test.numpy()])
    assert len(train) + len(test) == 1000
