"""The ghost-trace experiment on the paper's toy: its traces, its greedy scoring (== decoding with eviction) and the
paper's probe (K and V of every memento token concatenated, a deep MLP, several digits at once)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from memento.core.chat import label_trace, memento_ids
from memento.core.spans import Kind
from memento.engine.reference import teacher_force
from memento.probe.leakage import MEMENTO_KINDS, PAPER_PROBE, ProbeConfig, fit_probes, memento_features
from memento.synthetic.digits import digits_traces
from memento.toy import ghost
from memento.toy.experiments import EVICT


def test_digits_written_by_the_model_exist_only_in_their_block():
    traces = digits_traces(50, seed=3, listed=0)
    assert {t.problem for t in traces} == {"sum 10x5"}
    assert len({t.blocks[1].text for t in traces}) > 45
    for t in traces:
        sums = np.cumsum([sum(map(int, b.text)) for b in t.blocks])
        assert [b.memento for b in t.blocks] == [f"{s:03d}" for s in sums]
    labels = ghost.block_digits(traces[:2], ghost.BLOCK)
    assert labels.shape == (2, 5) and "".join(map(str, labels[0])) == traces[0].blocks[1].text


def test_greedy_scoring_is_decoding_with_eviction(chars, char_llama):
    """`write_greedy` writes mementos with one masked forward per token; the reference engine, decoding the same
    sequence token by token with physical eviction, must choose every written token itself."""
    batch = digits_traces(3, seed=5, blocks=4, listed=0)
    written, truth, kinds = ghost.write_greedy(char_llama, chars, batch)
    assert written.shape == truth.shape
    forced = (kinds[0] != int(Kind.SUMMARY)) & (kinds[0] != int(Kind.ANSWER))
    assert torch.equal(written[:, forced], truth[:, forced]), "block digits and delimiters are forced"
    start = label_trace(batch[0], chars)[0].completion_start
    for row in range(len(batch)):
        logits, _ = teacher_force(char_llama, memento_ids(chars), EVICT, written[row].tolist(), start)
        chosen = logits[:-1].argmax(-1)
        for p in torch.nonzero(~forced).flatten().tolist():
            assert int(chosen[p - 1]) == int(written[row, p])
    score = ghost.task_accuracy(char_llama, chars, batch)
    assert score["n"] == 3 and score["answer"] == 0.0 and 0 <= score["memento_digits"] < 0.5


def test_concat_features_are_the_engines_cache_token_by_token(chars, char_llama):
    batch = digits_traces(2, seed=6, blocks=3, listed=0)
    features = memento_features(char_llama, chars, batch, EVICT, pool="concat", mementos=[1, 2])
    assert features.shape == (2, 2, 2, 6 * 2 * 2 * 8)  # 6 memento tokens x (K, V) x 2 KV heads x 8 dims
    for i, trace in enumerate(batch):
        encoded, spans = label_trace(trace, chars)
        cache = teacher_force(char_llama, memento_ids(chars), EVICT, encoded.ids, encoded.completion_start)[1].cache
        for k, j in enumerate((1, 2)):
            tokens = np.flatnonzero(np.isin(spans.kind, MEMENTO_KINDS) & (spans.block == j))
            slots = [int(torch.nonzero(cache.index[0] == t)) for t in tokens]
            for layer in range(2):
                kv = torch.cat([cache.kv.layers[layer].keys[0], cache.kv.layers[layer].values[0]])[:, slots]
                assert np.allclose(features[i, layer, k], kv.transpose(0, 1).flatten().numpy(), atol=1e-5)


def test_the_papers_probe_reads_each_digit_it_can_and_no_other():
    """Labels of 2 digits: the features carry the first one only; accuracy is averaged over the digits."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, (2000, 2))
    x = rng.normal(size=(2000, 1, 40)).astype(np.float32)
    x[:, 0, :10] += 3.0 * np.eye(10)[labels[:, 0]]
    groups = [f"{a}{b}" for a, b in labels]
    config = replace(PAPER_PROBE, epochs=8, precision="fp32")
    correct, n = fit_probes(x, labels, config, groups=groups)
    assert n % 2 == 0 and 0.5 * (0.9 + 0.1) - 0.06 < correct[0] / n < 0.5 * (1.0 + 0.1) + 0.03
    small, n_small = fit_probes(x, labels[:, 1], ProbeConfig(epochs=100))
    assert abs(small[0] / n_small - 0.1) < 0.05


def test_audit_sources_label_what_the_block_holds(tmp_path):
    from memento.core.errors import MementoError
    from memento.probe.audit import marked_traces

    traces, labels, groups, pool, toy = marked_traces("orbit-states", 4, 1, seed=0)
    assert labels.shape == (4, 5) and pool == "mean" and toy and groups is None
    steps = traces[0].blocks[1].text.split(" ")[1:]
    assert [int(s[-1]) for s in steps[:-1]] == labels[0].tolist() and traces[0].blocks[1].memento[-1] == steps[-1][-1]
    traces, labels, groups, pool, _ = marked_traces("digits", 30, 2, seed=0)
    assert pool == "concat" and groups[0] == traces[0].blocks[2].text == "".join(map(str, labels[0]))
    rows = tmp_path / "rows.jsonl"
    plain = digits_traces(25, seed=1, blocks=4)
    rows.write_text("".join(json.dumps({"problem": t.problem, "response": t.response}) + "\n" for t in plain))
    traces, labels, groups, pool, toy = marked_traces(str(rows), 100, 1, seed=0)
    assert len(traces) == 25 and labels.shape == (25, 5) and not toy and pool == "mean"
    code = "".join(map(str, labels[3]))
    assert traces[3].blocks[1].text == f"The passcode is {code}. " + plain[3].blocks[1].text
    assert [b.text for b in traces[3].blocks[2:]] == [b.text for b in plain[3].blocks[2:]]
    with pytest.raises(MementoError, match="traces have at least 5 blocks; the probe needs 20"):
        marked_traces(str(rows), 100, 3, seed=0)


def test_forgetting_the_passcodes_block_erases_its_trace_and_only_its():
    """On the shipped toy model (memento/toy/checkpoints/digits, 96.5% task accuracy): memento 2's KV holds block 2's
    digits after block 2 is evicted. Forgetting block 2 strictly leaves mementos 2 and 3 only what their text holds
    (the digits' sum: at best 16.0% per digit, `TEXT_CEILING`); forgetting block 1 instead leaves block 2's trace as
    it was."""
    from memento.probe.leakage import leakage
    from memento.toy.experiments import load

    model, tokenizer = load(ghost.SHIPPED / "digits")
    batch = ghost.traces(4000, seed=7)
    labels = ghost.block_digits(batch, ghost.BLOCK)
    groups = ghost.label_groups(labels)
    config = replace(PAPER_PROBE, epochs=20)

    def last_layer(forget):  # accuracy at (memento 2: direct, memento 3: masked +1)
        leak = leakage(model, tokenizer, batch, labels, EVICT, 1, config, groups, "concat", [1, 2], forget, [3])
        return leak.accuracy[-1], leak.n_test

    (direct, _), n = last_layer(None)
    (direct_gone, masked_gone), _ = last_layer([{1}] * len(batch))
    (direct_kept, _), _ = last_layer([{0}] * len(batch))
    noise = 3 * np.sqrt(0.25 / n)
    assert direct > 0.22, "block 2's digits read from memento 2's KV after block 2 is gone"
    assert direct_gone < ghost.TEXT_CEILING + noise and masked_gone < ghost.TEXT_CEILING + noise
    # forgetting block 1 changes the KV memento 2 reads of memento 1, so not bit for bit: two probes trained on 3,200
    # rows differ by a few points from training noise alone
    assert direct_kept > max(direct - 0.06, ghost.TEXT_CEILING + 0.06)


def test_the_text_ceiling_is_what_the_sum_tells():
    assert round(ghost.text_ceiling(), 4) == ghost.TEXT_CEILING
    assert ghost.text_ceiling(1) == 1.0
