"""The reference engine: plain decoding equals `model.generate`, batched eviction equals one-by-one teacher forcing,
the cache holds exactly the survivors after every step, its KV occupancy equals the token-replay simulator's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import policies, small_trace, tiny_model

from memento.core.chat import encode_chat, memento_ids
from memento.core.errors import MementoError, MissingTokensError
from memento.core.format import render
from memento.core.kv import replay
from memento.core.policy import EvictionPolicy, eviction_schedule
from memento.core.spans import Kind, label
from memento.engine.generate import ReferenceEngine
from memento.engine.reference import Decoder, teacher_force
from memento.engine.sampling import Sampling
from memento.synthetic.sums import sums_traces

POLICIES = policies(
    "keep0",
    "keep1",
    "keep0-mask-delimiters",
    "keep0-last-block-for-answer",
    "keep0-restart",
    "keep1-restart",
    "keep0-restart-release",
    "keep1-restart-release",
)


@pytest.fixture(scope="module")
def model(chars):
    return tiny_model(len(chars))


def completions(tokenizer, traces):
    encoded = [encode_chat(tokenizer, t.problem, render(t)) for t in traces]
    return encoded, [e.ids[e.completion_start :] for e in encoded]


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_no_eviction_equals_model_generate(chars, arch):
    model = tiny_model(len(chars), arch)
    engine = ReferenceEngine(model, chars, EvictionPolicy(-1))
    prompts = ["Add these numbers: 1, 2.", "Add these numbers: 10, 20, 30, 40, 50.", "Hi"]
    for g, prompt in zip(engine.generate(prompts, Sampling(max_new_tokens=40), batch_size=2), prompts, strict=True):
        ids = torch.tensor([encode_chat(chars, prompt).ids])
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=40, do_sample=False)
        assert g.ids == ref[0, ids.shape[1] :].tolist()


def test_no_eviction_equals_model_generate_on_smollm2(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    engine = ReferenceEngine.from_pretrained(smollm2_dir, EvictionPolicy(-1), add_tokens=True)
    tokenizer, model = engine.tokenizer, engine.model
    prompt = "What is 7 times 8?"
    (g,) = engine.generate(prompt, Sampling(max_new_tokens=24))
    ids = torch.tensor([encode_chat(tokenizer, prompt).ids])
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
    assert g.ids == ref[0, ids.shape[1] :].tolist()[: len(g.ids)] and len(g.ids) > 3
    with pytest.raises(MissingTokensError, match="--add-tokens"):
        ReferenceEngine(AutoModelForCausalLM.from_pretrained(smollm2_dir), AutoTokenizer.from_pretrained(smollm2_dir))


@pytest.mark.parametrize("name", POLICIES)
def test_batched_eviction_equals_teacher_forcing_one_by_one(chars, model, name):
    """Ragged requests (2 slots, 4 requests: refill included), each evicting on its own schedule."""
    policy = POLICIES[name]
    traces = sums_traces(4, seed=7, blocks=(1, 4))
    encoded, forced = completions(chars, traces)
    engine = ReferenceEngine(model, chars, policy)
    out = engine.generate([t.problem for t in traces], force=forced, return_logits=True, batch_size=2)
    for e, g in zip(encoded, out, strict=True):
        ref = teacher_force(model, memento_ids(chars), policy, e.ids, e.completion_start)[0][e.completion_start - 1 :]
        assert g.finish_reason == "forced" and g.ids == e.ids[e.completion_start :]
        assert float((g.logits - ref).abs().max()) <= 1e-4


@pytest.mark.parametrize("name", ["keep0", "keep1", "keep0-mask-delimiters", "keep0-last-block-for-answer"])
def test_engine_kv_equals_the_replay_simulator(chars, model, name):
    policy = POLICIES[name]
    traces = sums_traces(3, seed=11, blocks=(2, 5))
    encoded, forced = completions(chars, traces)
    out = ReferenceEngine(model, chars, policy).generate([t.problem for t in traces], force=forced)
    special = memento_ids(chars)
    for e, g in zip(encoded, out, strict=True):
        sim = replay(label(e.ids, special, e.completion_start), policy, ReferenceEngine(model, chars).geometry)
        timeline = sim.tokens[e.completion_start - 1 :]
        assert g.stats.kv_timeline == timeline.tolist()
        assert g.stats.peak_kv_tokens == sim.peak_tokens and g.stats.evicted_tokens == sim.evicted_tokens
        assert g.stats.peak_kv_bytes == sim.peak_bytes
        assert g.stats.blocks == label(e.ids, special, e.completion_start).n_blocks


@pytest.mark.parametrize("name", ["keep0", "keep1", "keep0-mask-delimiters", "keep0-restart"])
def test_cache_holds_exactly_the_survivors_after_every_step(chars, model, name):
    policy = POLICIES[name]
    e = encode_chat(chars, small_trace(3).problem, render(small_trace(3)))
    spans = label(e.ids, memento_ids(chars), e.completion_start)
    schedule = eviction_schedule(spans, policy)
    decoder = Decoder(model, memento_ids(chars), policy)
    decoder.start(0, e.ids[: e.completion_start])
    decoder.forward()
    cache = decoder.cache
    for t in range(e.completion_start, len(e.ids)):
        decoder.push(0, e.ids[t])
        decoder.settle()
        decoder.forward()
        cache.check_integrity()
        alive = np.flatnonzero(schedule[: t + 1] > t)
        assert sorted(cache.index[0].tolist()) == alive.tolist(), f"after token {t}"
        assert cache.slots == len(alive), "freed memory is returned, not masked"


def test_sampling_is_reproducible_and_independent_of_the_batch(chars, model):
    engine = ReferenceEngine(model, chars, EvictionPolicy(0))
    sampling = Sampling(max_new_tokens=30, temperature=0.8, top_p=0.9, top_k=20, seed=3)
    prompts = ["Add these numbers: 3, 4.", "Add these numbers: 5, 6, 7."]
    together = engine.generate(prompts, sampling)
    alone = engine.generate(prompts[:1], sampling)
    assert together[0].ids == alone[0].ids
    assert engine.generate(prompts, sampling)[1].ids == together[1].ids
    greedy = engine.generate(prompts[:1], Sampling(max_new_tokens=30))
    top1 = engine.generate(prompts[:1], Sampling(max_new_tokens=30, temperature=1.0, top_k=1, seed=0))
    assert greedy[0].ids == top1[0].ids


def grammar(chars):
    """A processor that walks the Memento grammar: opens blocks of 'a's, closes mementos after 3 'b's."""
    special, a, b = memento_ids(chars), chars.convert_tokens_to_ids("a"), chars.convert_tokens_to_ids("b")

    def pick(_request, ids, logits):
        last = ids[-1]
        if special.think_start not in ids:
            want = special.think_start
        elif last == special.block_end:
            want = special.summary_start
        elif last in (special.summary_start, b) and ids[-3:] != [b, b, b]:
            want = b
        elif ids[-3:] == [b, b, b]:
            want = special.summary_end
        elif last in (special.think_start, special.summary_end):
            want = special.block_start
        else:
            want = a
        out = torch.full_like(logits, -1e9)
        out[want] = 0
        return out

    return pick


def test_max_block_tokens_and_max_blocks_steer_generation(chars, model):
    policy = EvictionPolicy(0, max_block_tokens=5, max_blocks=3)
    engine = ReferenceEngine(model, chars, policy)
    (g,) = engine.generate("Go.", Sampling(max_new_tokens=80), processor=grammar(chars), return_logprobs=True)
    spans = label(encode_chat(chars, "Go.").ids + g.ids, memento_ids(chars))
    assert spans.n_blocks == 3 and g.stats.blocks == 3
    special = memento_ids(chars)
    steered = [t for t, s in zip(g.ids, g.steered, strict=True) if s]
    assert steered == [special.block_end] * 3 + [special.think_end], "the caps' tokens are marked as not sampled"
    assert spans.count(Kind.BLOCK).tolist() == [5, 5, 5], "each block was closed after 5 tokens"
    assert "</think>" in g.text and g.stats.evictions == 3
    assert g.stats.peak_kv_tokens < len(encode_chat(chars, "Go.").ids) + len(g.ids) - 10


def test_streaming_callback_and_stats(chars, model):
    seen = []
    engine = ReferenceEngine(model, chars, EvictionPolicy(0, max_block_tokens=4))
    (g,) = engine.generate(
        "Go.", Sampling(max_new_tokens=40), processor=grammar(chars), on_token=lambda r, t, k, b: seen.append((t, k))
    )
    assert [t for t, _ in seen] == g.ids
    assert {Kind.BLOCK, Kind.SUMMARY} <= {k for _, k in seen}
    s = g.stats
    assert s.generated_tokens == 40 and g.finish_reason == "length"
    assert s.final_kv_tokens == s.kv_timeline[-1] and s.peak_kv_tokens == max(s.kv_timeline)
    assert s.auc_gb_ktok > 0 and s.ms_per_token > 0
    data = g.to_dict()
    assert data["trace"]["blocks"][0]["memento"] == "bbb" and data["stats"]["evictions"] == s.evictions


def test_forget_restarts_only_the_blocks_it_matches(chars, model):
    """`Sampling.forget`: batched generation equals teacher forcing with the same rule; a pattern that every block
    matches is restart mode, one that none matches is normal eviction, and the selection is neither. (The release's
    mode, and keep 1: `test_invariant.py`.)"""
    from memento.core.policy import forgetter

    traces = sums_traces(2, seed=3, blocks=(2, 3))  # two blocks each

    def run(forget, policy=POLICIES["keep0"]):
        engine = ReferenceEngine(model, chars, policy)
        prompts = [t.problem for t in traces]
        return engine.generate(prompts, Sampling(forget=forget), force=forced, return_logits=True, batch_size=2)

    (e, _), forced = completions(chars, traces)
    some = run(r"= 38\.")  # block 0 of the first trace ("0 + 38 = 38. ..."), no other
    rule = forgetter(r"= 38\.", lambda ids: chars.decode(ids, skip_special_tokens=False))
    ref = teacher_force(model, memento_ids(chars), POLICIES["keep0"], e.ids, e.completion_start, forget=rule)[0]
    assert float((some[0].logits - ref[e.completion_start - 1 :]).abs().max()) <= 1e-4
    assert [g.stats.forgotten for g in some] == [1, 0] and some[1].stats.evictions == 2
    restart, normal = run(None, POLICIES["keep0-restart"]), run(None)
    for flagged, same in ((run(r"\d"), restart), (run("no block says this"), normal)):
        for g, want in zip(flagged, same, strict=True):
            assert torch.equal(g.logits, want.logits) and g.stats.forgotten == want.stats.forgotten
    assert [g.stats.forgotten for g in restart] == [2, 2]
    assert (some[0].logits - normal[0].logits).abs().max() > 1e-4
    assert (some[0].logits - restart[0].logits).abs().max() > 1e-4


def test_bad_requests_get_clear_errors(chars, model):
    engine = ReferenceEngine(model, chars)
    with pytest.raises(MementoError, match="context"):
        engine.generate("x" * 3000)  # the tiny config's context is 2048
    with pytest.raises(MementoError, match="top_p"):
        Sampling(top_p=0)
    with pytest.raises(MementoError, match=r"forget: not a valid regular expression \(missing \)"):
        Sampling(forget="(")
    with pytest.raises(MementoError, match="forget needs eviction"):
        ReferenceEngine(model, chars, EvictionPolicy(-1)).generate("x", Sampling(forget="a"))
    with pytest.raises(MementoError, match="build the Engine with `decode`"):
        engine.engine.decode = None
        engine.engine.generate([[1, 2]], Sampling(forget="a"))
    with pytest.raises(MementoError, match="needs eviction"):
        EvictionPolicy(-1, restart=True)
