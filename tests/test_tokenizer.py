from __future__ import annotations

import pytest
import torch

from memento.core.chat import encode_chat, memento_ids
from memento.core.errors import MissingTokensError
from memento.core.format import SPECIAL_TOKENS
from memento.tokenizer import (
    CHATML_SYSTEM_TEMPLATE,
    CHATML_TEMPLATE,
    RELATED_WORDS,
    add_memento_tokens,
    init_memento_embeddings,
    related_ids,
)


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    return model, tokenizer


def test_embedding_init_on_smollm2(smollm2):
    model, tokenizer = smollm2
    with pytest.raises(MissingTokensError, match=r"has no <think>, </think>, <\|block_start\|>.*--add-tokens"):
        memento_ids(tokenizer)
    before = model.get_input_embeddings().weight.detach().clone()
    assert add_memento_tokens(tokenizer) == list(SPECIAL_TOKENS)  # SmolLM2 has no thinking tokens either
    written = init_memento_embeddings(model, tokenizer, seed=1)
    weight = model.get_input_embeddings().weight.detach()
    assert weight.shape[0] == len(tokenizer) == before.shape[0] + 6
    assert torch.equal(weight[: before.shape[0]], before)  # old rows untouched
    assert model.get_output_embeddings().weight.data_ptr() == weight.data_ptr()  # tied: one matrix
    rows = torch.stack([weight[written[t]] for t in SPECIAL_TOKENS])
    assert torch.cdist(rows, rows).add(torch.eye(6) * 1e9).min() > 0.1  # the new rows all differ
    expected = 0.01 * weight.shape[1] ** 0.5  # norm of the noise: sigma * sqrt(hidden)
    for token in SPECIAL_TOKENS:
        mean = before[related_ids(tokenizer, RELATED_WORDS[token])].mean(0)
        distance = (weight[written[token]] - mean).norm().item()
        assert 0.8 * expected < distance < 1.2 * expected, token
    # generation still runs after the resize, and the model can emit the new tokens
    messages = [{"role": "user", "content": "What is 2+3?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = ids["input_ids"]
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 8
    logits = model(ids).logits[0, -1]
    assert torch.isfinite(logits).all() and logits.shape[0] == len(tokenizer)


def test_untied_output_embeddings_and_spare_rows_are_initialised():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from memento.tokenizer import load_tokenizer

    tokenizer = load_tokenizer("qwen")
    config = Qwen3Config(
        vocab_size=151936,
        hidden_size=64,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        tie_word_embeddings=False,
    )
    model = Qwen3ForCausalLM(config)
    written = init_memento_embeddings(model, tokenizer, tokens=SPECIAL_TOKENS[2:])
    assert model.get_input_embeddings().weight.shape[0] == 151936  # never shrunk to the tokenizer's 151,673
    expected = 0.01 * 64**0.5  # sigma * sqrt(hidden); a row left at its random init is ~2x further
    for weight in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        for token, row in written.items():
            mean = weight[related_ids(tokenizer, RELATED_WORDS[token])].mean(0)
            assert 0.7 * expected < (weight[row] - mean).norm() < 1.3 * expected


def test_chat_templates_drop_or_keep_system(qwen):
    messages = [{"role": "system", "content": "SYS"}, {"role": "user", "content": "hi"}]
    qwen.chat_template = CHATML_SYSTEM_TEMPLATE
    kept = qwen.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    qwen.chat_template = CHATML_TEMPLATE
    dropped = qwen.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert dropped == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert kept == "<|im_start|>system\nSYS<|im_end|>\n" + dropped


def test_encode_chat_tokenizes_the_response_after_the_prompt(qwen):
    prompt = encode_chat(qwen, "hi")
    full = encode_chat(qwen, "hi", "<think>\n</think>\n\nok")
    assert full.ids[: len(prompt.ids)] == prompt.ids and full.completion_start == len(prompt.ids)
    assert qwen.decode(full.ids[full.completion_start :]) == "<think>\n</think>\n\nok<|im_end|>\n"


def test_cached_smollm2_is_the_real_pretrained_model(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(ids["input_ids"], max_new_tokens=10, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1] :])


def test_the_releases_block_size_counter_is_cl100k_offline():
    from memento.tokenizer import token_counter

    count, name = token_counter("cl100k")
    assert name == "cl100k_base"
    # cl100k_base splits these as OpenAI's tokenizer does: "hello", " world"; 'tiktoken' is "t", "ik", "token"
    assert count(["hello world", "tiktoken", ""]) == [2, 3, 0]
    qwen, qwen_name = token_counter("qwen")
    assert qwen_name == "qwen" and qwen(["hello world"]) == [2]
