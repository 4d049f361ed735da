"""Multi-turn chats with `compact_prompt`: the blocks of earlier assistant turns are evicted as the prompt is fed
(their mementos stay), in the reference engine as in training masks; vLLM's side is in test_vllm."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import POLICIES, small_trace, tiny_model

from memento.core.chat import encode_messages, memento_ids
from memento.core.format import render
from memento.core.policy import EvictionPolicy, eviction_schedule
from memento.core.spans import Kind, label
from memento.engine.generate import ReferenceEngine
from memento.engine.reference import teacher_force
from memento.engine.sampling import Sampling
from memento.tokenizer import char_tokenizer
from memento.train.masks import model_mask


@pytest.fixture(scope="module")
def chars():
    return char_tokenizer()


@pytest.fixture(scope="module")
def model(chars):
    return tiny_model(len(chars), "qwen3")


def chat() -> list[dict]:
    """Two turns: the first answered with a Memento trace of 3 blocks, the second waiting for its answer."""
    first = small_trace(3)
    return [
        {"role": "user", "content": first.problem},
        {"role": "assistant", "content": render(first)},
        {"role": "user", "content": "And the sum of the first cubes?"},
    ]


@pytest.mark.parametrize("name", ["keep0", "keep1", "keep0-mask-delimiters"])
def test_compacted_prompt_equals_the_masked_forward(model, chars, name):
    """Teacher-forced through a chat and a second Memento answer, decoding that compacts the prompt gives the
    logits of one forward under the mask of the whole chat labelled turn by turn; the first turn's blocks are gone
    from the cache, its mementos are not."""
    policy = EvictionPolicy(**{**vars_of(POLICIES[name]), "compact_prompt": True})
    special = memento_ids(chars)
    prompt = encode_messages(chars, chat())
    ids = prompt + chars.encode(render(small_trace(2)), add_special_tokens=False)
    spans = label(ids, special, 0, strict=False, turns=True)
    assert spans.n_blocks == 5 and not spans.issues
    schedule = torch.from_numpy(eviction_schedule(spans, policy))[None]
    mask = model_mask(model, schedule, torch.zeros_like(schedule, dtype=torch.bool))
    with torch.no_grad():
        full = model(input_ids=torch.tensor([ids]), attention_mask=mask, position_ids=torch.arange(len(ids))[None])
    decoded, decoder = teacher_force(model, special, policy, ids, len(prompt), check=True)
    assert decoded.shape == full.logits[0].shape
    assert float((full.logits[0] - decoded).abs().max()) <= 1e-4
    held = set(decoder.cache.index[0].tolist())
    first_turn = [i for i in range(len(prompt)) if spans.block[i] in (0, 1, 2)]
    assert not any(i in held for i in first_turn if spans.kind[i] == Kind.BLOCK)
    assert all(i in held for i in first_turn if spans.kind[i] == Kind.SUMMARY)


def vars_of(policy: EvictionPolicy) -> dict:
    return {f: getattr(policy, f) for f in policy.__dataclass_fields__}


def test_generation_with_a_compacted_prompt_holds_less_and_says_so(model, chars):
    """A chat's earlier blocks count as evictions of the request; its KV statistics equal the replay of the chat
    labelled turn by turn; without `compact_prompt` the same chat keeps every block."""
    sampling = Sampling(max_new_tokens=40)
    kept = ReferenceEngine(model, chars, EvictionPolicy(0)).generate(chat(), sampling)[0]
    engine = ReferenceEngine(model, chars, EvictionPolicy(0, compact_prompt=True))
    compacted = engine.generate(chat(), sampling)[0]
    assert kept.stats.evictions == 0 and compacted.stats.evictions >= 3
    assert compacted.stats.peak_kv_tokens < kept.stats.peak_kv_tokens
    replayed = engine.kv_comparison(compacted).memento
    assert compacted.stats.peak_kv_bytes == replayed.peak_bytes
    assert compacted.stats.final_kv_tokens == int(replayed.tokens[-1])


def test_compact_prompt_needs_eviction():
    from memento.core.errors import MementoError

    with pytest.raises(MementoError, match="compact_prompt needs eviction"):
        EvictionPolicy(-1, compact_prompt=True)


def test_a_turn_cut_off_inside_a_block_still_opens_the_next_turn(chars):
    """An earlier answer that stopped at the length limit inside a block: the next turn's `<think>` still opens a
    new turn (its blocks numbered on), and the unfinished block, never closed by a memento, is never evicted."""
    special = memento_ids(chars)
    first = render(small_trace(2))
    cut = first[: first.index("Step 1") + 10]  # inside the second block
    messages = [*chat()[:1], {"role": "assistant", "content": cut}, chat()[2]]
    prompt = encode_messages(chars, messages) + chars.encode(render(small_trace(2)), add_special_tokens=False)
    spans = label(prompt, special, 0, strict=False, turns=True)
    think = [i for i, t in enumerate(prompt) if t == special.think_start]
    assert len(think) == 2 and spans.kind[think[1]] == Kind.THINK_START
    assert spans.n_blocks == 4 and not spans.issues
    schedule = eviction_schedule(spans, EvictionPolicy(0, compact_prompt=True))
    unfinished = spans.kind == Kind.BLOCK
    unfinished &= spans.block == 1
    assert (schedule[unfinished] == np.iinfo(np.int64).max).all()
