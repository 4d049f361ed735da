"""`memento eval` runs: SmolLM2-135M on offline tasks, resumption after an interruption, and the summary metrics."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from memento.core.errors import MementoError
from memento.core.policy import EvictionPolicy
from memento.eval.run import EvalSettings, evaluate, problems_of, sample_seed, summarize

FULL = asdict(EvictionPolicy(-1))


@pytest.fixture(scope="module")
def smol_memento():
    from memento.tokenizer import smollm2_memento_dir

    return str(smollm2_memento_dir())


def test_an_interrupted_run_resumes_without_recomputing_finished_samples(smol_memento, tmp_path):
    settings = EvalSettings(
        smol_memento, "gym:basic_arithmetic", samples=2, temperature=0.8, top_p=0.95, max_new_tokens=16
    )
    first = evaluate(settings, tmp_path / "a", limit=2, progress=False)
    lines = (tmp_path / "a" / "results.jsonl").read_text().splitlines()
    assert first["generated_now"] == 4 and len(lines) == 4 and first["problems"] == 2
    record = json.loads(lines[0])
    assert record["outcome"] in ("correct", "wrong", "no_answer") and record["peak_kv_tokens"] > 0
    # interrupted while writing the second sample: one whole line and half of the next survive
    (tmp_path / "a" / "results.jsonl").write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    again = evaluate(settings, tmp_path / "a", limit=2, progress=False)
    assert again["generated_now"] == 3  # only the samples that were lost
    redone = (tmp_path / "a" / "results.jsonl").read_text().splitlines()
    assert sorted(redone) == sorted(lines)  # each sample has its own seed: the same text as before
    assert evaluate(settings, tmp_path / "a", limit=3, progress=False)["generated_now"] == 2  # --limit extends
    with pytest.raises(MementoError, match="other settings"):
        evaluate(EvalSettings(smol_memento, "gym:basic_arithmetic"), tmp_path / "a", limit=2, progress=False)


def test_champ_with_smollm2_records_answers_and_kv(smol_memento, tmp_path):
    summary = evaluate(EvalSettings(smol_memento, "champ", max_new_tokens=24), tmp_path, limit=2, progress=False)
    assert summary["problems"] == 2 and summary["samples"] == 1
    assert summary["truncated"] == 1.0 and summary["no_answer"] == 1.0  # 24 tokens: no answer is boxed yet
    assert summary["tokens"] == 24 and summary["peak_kv_tokens"] > 24
    assert json.loads((tmp_path / "summary.json").read_text())["pass@1"] == 0.0


def test_pass_and_majority_metrics():
    def rec(problem, sample, answer, outcome):
        return {
            "problem": problem,
            "sample": sample,
            "answer": answer,
            "outcome": outcome,
            "finish_reason": "stop",
            "tokens": 10,
            "blocks": 1,
            "peak_kv_tokens": 5,
            "auc_kv_ktok": 0.1,
            "evicted_tokens": 2,
        }

    records = [
        rec("a", 0, "1", "correct"),
        rec("a", 1, "2", "wrong"),
        rec("a", 2, "2", "wrong"),  # majority wrong
        rec("b", 0, None, "no_answer"),
        rec("b", 1, "7", "correct"),
        rec("b", 2, None, "no_answer"),  # majority right
        rec("c", 0, "7", "wrong"),
        rec("c", 1, "1/2", "correct"),
        rec("c", 2, "0.5", "correct"),  # equivalent: one vote
    ]
    settings = EvalSettings("m", "champ", samples=3, temperature=0.6)
    s = summarize(records, settings)
    assert s["pass@1"] == pytest.approx((1 / 3 + 1 / 3 + 2 / 3) / 3)
    assert s["pass@3"] == 1.0 and s["maj@3"] == pytest.approx(2 / 3)
    assert s["no_answer"] == pytest.approx(2 / 9)
    lo, hi = s["pass@1_ci95"]
    assert 0 < lo < s["pass@1"] < hi < 1
    wrong = [rec(p, j, "3", "wrong") for p in "abcd" for j in range(3)]
    lo, hi = summarize(wrong, settings)["pass@1_ci95"]
    assert lo == 0 and hi > 0.3  # all wrong: Wilson's interval, not a point
    assert summarize(wrong, settings, votes=False)["maj@3"] is None  # programs are not voted on


def test_sample_seeds_are_their_own():
    seeds = {sample_seed(s, p, j) for s in range(3) for p in ("aime25/1", "aime25/2") for j in range(4)}
    assert len(seeds) == 3 * 2 * 4 and sample_seed(0, "x", 1) == sample_seed(0, "x", 1) < 2**31


def test_bad_settings_and_tasks_are_refused():
    with pytest.raises(MementoError, match="--dtype bf16"):
        EvalSettings("m", "champ", dtype="bf16")
    with pytest.raises(MementoError, match="--engine"):
        EvalSettings("m", "champ", engine="sglang")
    with pytest.raises(MementoError, match="--limit 0"):
        problems_of("champ", 0)


def test_a_base_model_runs_under_full_attention_only(smollm2_dir, tmp_path):
    settings = EvalSettings(str(smollm2_dir), "gym:basic_arithmetic", max_new_tokens=12, policy={**FULL})
    summary = evaluate(settings, tmp_path / "base", limit=1, progress=False)
    (record,) = [json.loads(line) for line in (tmp_path / "base" / "results.jsonl").read_text().splitlines()]
    assert summary["blocks"] == 0 and record["memento_tokens"] == [] and "<|block_start|>" not in record["text"]
    assert record["evicted_tokens"] == 0 and record["peak_kv_tokens"] > 12  # the prompt and every token it fed
    with pytest.raises(MementoError, match=r"no Memento tokens.*--policy full"):
        evaluate(EvalSettings(str(smollm2_dir), "gym:basic_arithmetic"), tmp_path / "evict", limit=1, progress=False)
