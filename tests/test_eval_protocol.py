"""Evaluation protocols, the answer cut off inside <think>, maj@k by k, and the Comp. Math aggregate."""

from __future__ import annotations

import json
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memento.core.errors import MementoError
from memento.core.intervals import standard_error
from memento.eval import protocol
from memento.eval.report import comp_math, plot_majority, report
from memento.eval.run import _majority, majority_curve, record, summarize
from memento.eval.settings import EvalSettings
from memento.eval.tasks import get
from memento.toy.demo import SHIPPED

PAPER = protocol.get("paper")


def test_the_paper_protocol_samples_64_on_competition_math_and_2_elsewhere():
    settings, departures = PAPER.settings("hmmt_feb25")
    assert settings == {"samples": 64, "temperature": 0.6, "top_p": 0.95, "top_k": 20, "max_new_tokens": 32_000}
    assert departures == []
    assert PAPER.settings("aime26:/data/aime26.jsonl")[0]["samples"] == 64  # a local copy is still the competition
    assert PAPER.settings("gpqa")[0]["samples"] == 2 and PAPER.settings("lcb")[0]["samples"] == 2
    assert protocol.get("quick").settings("aime25")[0] == {
        "samples": 1,
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": 0,
        "max_new_tokens": 4096,
    }
    with pytest.raises(MementoError, match="choose from paper, quick"):
        protocol.get("fast")


def test_given_values_win_and_are_reported_with_a_short_model_context():
    settings, departures = PAPER.settings("math500", SHIPPED / "curriculum", samples=4, temperature=None)
    assert settings["samples"] == 4 and settings["temperature"] == 0.6  # None: not given
    assert departures == [
        "samples per problem 4 (protocol: 2)",
        "model context 1024 tokens (protocol: 32768; samples that reach it stop)",
    ]
    made = EvalSettings(
        str(SHIPPED / "curriculum"),
        "math500",
        **protocol.settings_for(
            {"protocol": "paper", "samples": 4, "seed": 3, "max_new_tokens": None}, SHIPPED / "curriculum", "math500"
        ),
    )
    assert made.protocol == "paper" and made.samples == 4 and made.seed == 3 and made.max_new_tokens == 32_000
    assert made.deviations() == departures
    plain = protocol.settings_for({"protocol": "", "samples": None, "max_new_tokens": 64}, "m", "math500")
    assert plain == {"max_new_tokens": 64, "protocol": ""}  # no protocol: EvalSettings' defaults fill the rest
    assert EvalSettings("m", "math500", **plain).deviations() == []
    with pytest.raises(MementoError, match="--protocol fast"):
        EvalSettings("m", "math500", protocol="fast")


def _sample(text: str):
    from memento.eval.backends import Sample

    return Sample("length", 10, 0, 0, 10, 0.1, 100, text=text)


def test_a_completion_cut_off_inside_think_has_no_answer_unless_asked():
    task = get("toy:orbit")
    problem = task.problems()[0]
    cut = f"<think>\nso far \\boxed{{{problem.reference}}} and then"
    assert record(task, problem, 0, 1, _sample(cut))["outcome"] == "no_answer"
    assert record(task, problem, 0, 1, _sample(cut), answer_in_open_think=True)["outcome"] == "correct"
    closed = f"<think>\nwork</think>\n\\boxed{{{problem.reference}}}"
    assert record(task, problem, 0, 1, _sample(closed))["outcome"] == "correct"


def _records(outcomes: list[tuple[str | None, bool]]) -> list[dict]:
    return [{"answer": a, "outcome": "no_answer" if a is None else "correct" if ok else "wrong"} for a, ok in outcomes]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.sampled_from([None, "1", "2", "3"]), st.booleans()), min_size=1, max_size=7),
        min_size=1,
        max_size=4,
    )
)
def test_maj_at_k_curve_is_the_mean_vote_over_every_window(problems):
    problems = [_records([(a, ok and a is not None) for a, ok in p]) for p in problems]
    curve = majority_curve(problems)
    n = min(len(p) for p in problems)
    for k in range(1, n + 1):
        brute = sum(sum(_majority([p[(j + i) % n] for i in range(k)]) for j in range(n)) / n for p in problems)
        assert curve[k - 1] == pytest.approx(brute / len(problems))
    pass1 = sum(sum(r["outcome"] == "correct" for r in p[:n]) / n for p in problems) / len(problems)
    assert curve[0] == pytest.approx(pass1)


def test_majority_voting_gains_when_the_right_answer_is_the_plurality():
    rng = random.Random(0)
    problems = [
        _records([("7", True) if rng.random() < 0.4 else (str(rng.randint(1, 6)), False) for _ in range(32)])
        for _ in range(20)
    ]
    curve = majority_curve(problems)
    assert curve[0] == pytest.approx(0.4, abs=0.06) and curve[-1] > 0.8  # wrong answers split their votes


def _summary(task: str, scores: list[float], run: str = "memento") -> dict:
    records = []
    for n, score in enumerate(scores):
        for j in range(4):
            ok = j < round(score * 4)
            records.append(
                {
                    "problem": f"{task}/{n}",
                    "sample": j,
                    "answer": "1" if ok else "2",
                    "outcome": "correct" if ok else "wrong",
                    "finish_reason": "stop",
                    "tokens": 100,
                    "blocks": 2,
                    "peak_kv_tokens": 60,
                    "auc_kv_ktok": 4.0,
                    "evicted_tokens": 40,
                }
            )
    settings = EvalSettings("m", task, samples=4, temperature=0.6, protocol="paper")
    return {"run": run, **summarize(records, settings)}


def test_comp_math_is_the_unweighted_mean_of_the_competitions_with_their_standard_errors():
    aime = _summary("aime25", [1, 1, 0, 0.5])  # 4 problems, mean 0.625
    hmmt = _summary("hmmt_feb25", [0.25, 0.25])  # 2 problems, mean 0.25
    math = _summary("math500", [0, 0, 0])
    assert aime["pass@1_se"] == pytest.approx(standard_error([1, 1, 0, 0.5]))
    assert standard_error([1, 1, 0, 0.5]) == pytest.approx((0.229166666 / 4) ** 0.5)  # sample variance / n
    assert hmmt["pass@1_se"] == 0.0 and standard_error([0.5]) is None
    found = comp_math([aime, hmmt, math])
    assert found["pass@1"] == pytest.approx((0.625 + 0.25) / 2)  # unweighted: not (2.5 + 0.5) / 6
    assert found["se"] == pytest.approx((aime["pass@1_se"] ** 2 + 0) ** 0.5 / 2)
    assert found["tasks"] == ["aime25", "hmmt_feb25"] and found["of"] == 11
    assert comp_math([math]) is None


def test_the_report_states_the_protocol_departures_comp_math_and_the_vote_plot(tmp_path):
    summaries = [_summary("aime25", [1, 1, 0, 0.5]), _summary("hmmt_feb25", [0.25, 0.75]), _summary("gpqa", [0.5])]
    summaries[2]["deviations"] = ["samples per problem 4 (protocol: 2)"]
    summaries[0]["checkers_disagree"] = 3
    summaries[1]["live_kv"] = {"requests": 2, "max_relative_difference": 0.0, "missing": 0}
    result = {
        "tasks": ["aime25", "hmmt_feb25", "gpqa"],
        "runs": [{"name": "memento", "model": "/m/memento", "policy": {"keep_last_n_blocks": 0}}],
        "settings": {"protocol": "paper", "seed": 0, "engine": "reference"},
        "limit": None,
        "summaries": summaries,
        "differences": [],
        "comp_math": {"memento": comp_math(summaries)},
        "plots": {},
    }
    result["plots"]["majority"] = plot_majority(result, tmp_path / "majority.png")
    assert (tmp_path / "majority.png").read_bytes()[:4] == b"\x89PNG"
    text = report(result)
    assert "Protocol **paper**: the paper's (App. A.2.2)" in text
    assert "- memento, gpqa: samples per problem 4 (protocol: 2)" in text
    assert "| run | model | policy | Comp. Math (2 of 11) | gpqa |" in text
    assert "| memento | memento | keep0 | 56.2 ± " in text  # (62.5 + 50) / 2
    assert "### Competition math" in text and "![maj@k](majority.png)" in text
    assert "- memento, aime25: math-verify disagrees with the paper's check on 3 samples" in text
    assert "- memento, hmmt_feb25: live KV on the server's /metrics against the token replay, 2 requests" in text
    json.dumps(result)  # what summary.json holds


def test_the_help_lists_the_protocols_and_the_fourteen_tasks():
    import subprocess
    import sys
    from pathlib import Path

    from memento.eval.tasks import PAPER_TASKS

    memento = str(Path(sys.executable).parent / "memento")
    text = subprocess.run(
        [memento, "eval", "--help"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}
    ).stdout
    flat = " ".join(text.replace("│", " ").split())
    assert "--protocol" in flat and "paper:" in flat and "quick:" in flat
    assert all(task in flat for task in PAPER_TASKS)
