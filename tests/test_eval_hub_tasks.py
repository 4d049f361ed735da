"""The paper's benchmarks (AIME, MATH-500, GPQA-Diamond, LiveCodeBench) read from local files with the Hub's field
names, their checkers on known right, wrong and missing answers, and the errors for bad files and no network."""

from __future__ import annotations

import base64
import json
import os
import pickle
import socket
import subprocess
import sys
import time
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from memento.core.errors import MementoError
from memento.eval.tasks import MATH_INSTRUCTION, get
from memento.eval.tasks.gpqa import shuffle
from memento.eval.tasks.livecodebench import decode_tests, encode_tests, parse_option


def jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


# AIME


def test_aime_reads_matharena_rows_and_compares_integer_answers(tmp_path):
    rows = [
        {"problem_idx": 1, "problem": "Find $x$.", "answer": 204},
        {"problem_idx": 2, "problem": "Find $y$.", "answer": 33},
    ]
    task = get("aime25:" + jsonl(tmp_path / "aime25.jsonl", rows))
    p204, p33 = task.problems()
    assert [p204.id, p33.id] == ["aime25/1", "aime25/2"] and p33.reference == "33"
    assert p204.prompt == f"Find $x$.\n\n{MATH_INSTRUCTION}"
    assert task.check(p204, "<think>maybe \\boxed{7}</think>So \\boxed{204}.").outcome == "correct"
    assert task.check(p204, "</think>\\boxed{033}").outcome == "wrong"
    assert task.check(p33, "</think>\\boxed{033}").outcome == "correct"  # zero-padded as on AIME sheets: by value
    assert task.check(p33, "</think>The answer is 33.").outcome == "no_answer"  # no \boxed{}


def test_aime_reads_h4_parquet_and_falls_back_to_row_numbers(tmp_path):
    h4 = [{"id": 60, "problem": "P", "solution": "S", "answer": "204", "url": "u", "year": "2024"}]
    assert [p.id for p in get("aime24:" + parquet(tmp_path / "a.parquet", h4)).problems()] == ["aime24/60"]
    bare = [{"problem": "P1", "answer": "1"}, {"problem": "P2", "answer": "2"}]
    assert [p.id for p in get("aime26:" + jsonl(tmp_path / "b.jsonl", bare)).problems()] == ["aime26/1", "aime26/2"]


# MATH-500


def test_math500_keeps_ids_and_subjects_and_checks_by_equivalence(tmp_path):
    rows = [
        {
            "problem": "Compute $1/2$.",
            "solution": "...",
            "answer": "\\frac{1}{2}",
            "subject": "Algebra",
            "level": 1,
            "unique_id": "test/algebra/1.json",
        },
        {
            "problem": "Convert to polar.",
            "solution": "...",
            "answer": "\\left( 3, \\frac{\\pi}{2} \\right)",
            "subject": "Precalculus",
            "level": 2,
            "unique_id": "test/precalculus/807.json",
        },
    ]
    task = get("math500:" + parquet(tmp_path / "math500.parquet", rows))
    half, polar = task.problems()
    assert half.id == "test/algebra/1.json" and half.data == {"subject": "Algebra", "level": 1}
    assert half.prompt.startswith("Compute $1/2$.") and "\\boxed{}" in half.prompt
    assert task.check(half, "</think>\\boxed{0.5}").outcome == "correct"
    assert task.check(half, "</think>\\boxed{\\dfrac12}").outcome == "correct"
    assert task.check(half, "</think>\\boxed{\\frac{1}{3}}").outcome == "wrong"
    assert task.check(polar, "</think>\\boxed{(3, \\pi/2)}").outcome == "correct"
    assert task.check(polar, "</think>\\boxed{(3, \\pi)}").outcome == "wrong"


# GPQA


def gpqa_row(n: int) -> dict:
    return {
        "Record ID": f"rec{n}",
        "Question": f" Which value is right in case {n}?\n",
        "Correct Answer": f"right {n}",
        "Incorrect Answer 1": "wrong a",
        "Incorrect Answer 2": "wrong b",
        "Incorrect Answer 3": "wrong c ",
        "Explanation": "...",
        "High-level domain": "Physics",
    }


def test_gpqa_shuffles_the_choices_deterministically_and_checks_letters(tmp_path):
    import csv

    path = tmp_path / "gpqa_diamond.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(gpqa_row(0)))
        writer.writeheader()
        writer.writerows(gpqa_row(n) for n in range(20))
    task = get(f"gpqa:{path}")
    problems = task.problems()
    assert len(problems) == 20 and problems[3].id == "gpqa/rec3" and problems[3].data["domain"] == "Physics"
    for p in problems:
        right = p.data["choices"].index(f"right {int(p.id[8:])}")
        assert p.reference == "ABCD"[right] and f"{p.reference}) right " in p.prompt
        assert p.prompt.startswith("Which value is right") and "wrong c\n" in p.prompt + "\n"  # stripped
    assert len({p.reference for p in problems}) > 1  # the right answer moves around
    assert [p.prompt for p in get(f"gpqa:{path}").problems()] == [p.prompt for p in problems]
    assert shuffle("What is 2+2?", "4", ["3", "5", "6"]) == (["3", "6", "5", "4"], "D")  # the same on every machine
    p = problems[0]
    wrong = next(x for x in "ABCD" if x != p.reference)
    assert task.check(p, f"<think>\\boxed{{{wrong}}}</think>\\boxed{{{p.reference}}}").outcome == "correct"
    assert task.check(p, f"</think>\\boxed{{\\text{{({p.reference})}}}}").outcome == "correct"
    assert task.check(p, f"</think>The answer is ({p.reference}).").outcome == "correct"
    assert task.check(p, f"</think>\\boxed{{{wrong}}}").outcome == "wrong"
    assert task.check(p, "</think>\\boxed{right 0}").outcome == "no_answer"  # the text, not a letter
    assert task.check(p, "</think>I am not sure.").outcome == "no_answer"


# LiveCodeBench


def lcb_row(qid, tests, *, starter="", func_name=None, date="2025-03-01T00:00:00", encode=True) -> dict:
    return {
        "question_title": f"title {qid}",
        "question_content": f"Problem {qid}.",
        "platform": "atcoder",
        "question_id": qid,
        "contest_id": "c1",
        "contest_date": date,
        "starter_code": starter,
        "difficulty": "easy",
        "public_test_cases": json.dumps(tests[:1]),
        "private_test_cases": encode_tests(tests[1:]) if encode else json.dumps(tests[1:]),
        "metadata": json.dumps({"func_name": func_name} if func_name else {}),
    }


SUM = [{"input": f"{a} {b}\n", "output": f"{a + b}\n", "testtype": "stdin"} for a, b in [(1, 2), (5, 7), (10, 20)]]
TWICE = [{"input": f"{x}", "output": f"{2 * x}", "testtype": "functional"} for x in (1, 4, -3)]
STARTER = "class Solution:\n    def twice(self, x: int) -> int:\n        "


def answer(code: str) -> str:
    return f"<think>Let me think.</think>Here it is:\n```python\n{code}\n```\n"


def test_lcb_runs_stdin_and_functional_programs_on_public_and_private_tests(tmp_path):
    rows = [lcb_row("abc1", SUM), lcb_row("lc2", TWICE, starter=STARTER, func_name="twice", encode=False)]
    task = get("lcb:" + jsonl(tmp_path / "lcb.jsonl", rows))
    stdin, functional = task.problems()
    assert [stdin.id, functional.id] == ["lcb/abc1", "lcb/lc2"]
    assert stdin.prompt.startswith("Problem abc1.") and "standard input" in stdin.prompt and "```python" in stdin.prompt
    assert STARTER.strip() in functional.prompt and "standard input" not in functional.prompt
    assert stdin.data["public"] == SUM[:1] and decode_tests(stdin.data["private"]) == SUM[1:]
    right = "a, b = map(int, input().split())\nprint(a + b)"
    verdict = task.check(stdin, answer(right))
    assert verdict.outcome == "correct" and verdict.answer == right + "\n"
    public_only = "a, b = map(int, input().split())\nprint(a + b if a < 5 else 0)"  # fails the private tests
    assert task.check(stdin, answer(public_only)).outcome == "wrong"
    assert task.check(stdin, "<think>```python\nprint(3)\n```</think>no code").outcome == "no_answer"
    method = "class Solution:\n    def twice(self, x: int) -> int:\n        return {}"
    assert task.check(functional, answer(method.format("2 * x"))).outcome == "correct"
    assert task.check(functional, answer(method.format("abs(2 * x)"))).outcome == "wrong"  # fails the private -3


def test_lcb_private_tests_decode_from_the_hub_encoding_and_refuse_objects():
    tests = SUM + TWICE
    raw = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()  # as the hub stores them
    assert encode_tests(tests) == raw and decode_tests(raw) == tests
    assert decode_tests(json.dumps(tests)) == tests and decode_tests(tests) == tests and decode_tests("") == []
    hostile = base64.b64encode(zlib.compress(pickle.dumps(print))).decode()  # a pickle naming a callable
    with pytest.raises(pickle.UnpicklingError, match=r"builtins\.print"):
        decode_tests(hostile)


def test_lcb_options_select_a_file_and_a_contest_window(tmp_path):
    assert parse_option("") == ("", ("2025-02-01", "2025-05-01"))  # the hub's "LCB v6" window
    assert parse_option("2024-08-01..2025-02-01") == ("", ("2024-08-01", "2025-02-01"))
    assert parse_option("..") == ("", None)  # all of release_v6
    assert parse_option("/d/x.jsonl") == ("/d/x.jsonl", None)
    assert parse_option("/d/x@2.jsonl") == ("/d/x@2.jsonl", None)
    assert parse_option("/d/x.jsonl@2025-01-01..") == ("/d/x.jsonl", ("2025-01-01", None))
    dates = ["2025-01-31T23:00:00", "2025-02-01T00:00:00", "2025-04-30T12:00:00", "2025-05-01T00:00:00"]
    path = parquet(tmp_path / "lcb.parquet", [lcb_row(f"q{i}", SUM, date=d) for i, d in enumerate(dates)])
    assert [p.id for p in get(f"lcb:{path}").problems()] == ["lcb/q0", "lcb/q1", "lcb/q2", "lcb/q3"]
    assert [p.id for p in get(f"lcb:{path}@2025-02-01..2025-05-01").problems()] == ["lcb/q1", "lcb/q2"]
    assert [p.id for p in get(f"lcb:{path}@..2025-02-01").problems()] == ["lcb/q0"]


# errors


def test_a_missing_field_names_the_file_the_row_and_the_field(tmp_path):
    path = jsonl(tmp_path / "aime.jsonl", [{"problem": "P", "answer": 1}, {"problem": "Q", "solution": "S"}])
    with pytest.raises(MementoError, match=r"aime\.jsonl:2: no field 'answer' \(the row has: problem, solution\)"):
        get(f"aime25:{path}").problems()
    path = parquet(tmp_path / "m.parquet", [{"problem": "P", "answer": "1"}])
    with pytest.raises(MementoError, match=r"m\.parquet, row 1: no field 'unique_id'"):
        get(f"math500:{path}").problems()


def test_unreadable_files_are_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "P", "answer": 1}\n\n{"problem": "Q", "answer": \n')
    with pytest.raises(MementoError, match=r"bad\.jsonl:3: not a JSON object"):
        get(f"aime24:{bad}").problems()
    with pytest.raises(MementoError, match="no such file"):
        get(f"gpqa:{tmp_path / 'absent.csv'}").problems()
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(MementoError, match="unknown format"):
        get(f"math500:{tmp_path / 'x.txt'}").problems()
    (tmp_path / "x.parquet").write_text("not parquet")
    with pytest.raises(MementoError, match="not a readable Parquet file"):
        get(f"aime25:{tmp_path / 'x.parquet'}").problems()


def run_without_network(script: str, hf_home) -> subprocess.CompletedProcess:
    """`script` in a fresh interpreter (the Hub client reads its settings at import) whose Hub is a closed local port
    (HF_HUB_OFFLINE unset) and whose Hugging Face cache is `hf_home`."""
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env |= {"HF_ENDPOINT": f"http://127.0.0.1:{closed.getsockname()[1]}", "HF_HOME": str(hf_home)}
        script = f"from memento.eval.tasks import get\n{script}"
        return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)


def test_without_network_the_hub_tasks_say_so_and_name_the_fields(tmp_path):
    start = time.monotonic()
    done = run_without_network("get('aime25').problems()", tmp_path / "hf")  # an empty cache
    assert done.returncode != 0 and time.monotonic() - start < 30  # at once, not after a half-minute of retries
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("memento.core.errors.MementoError: task aime25: no network access to the Hugging Face Hub")
    assert "MathArena/aime_2025" in last and "problem, answer" in last and "`aime25:/path/to/file.jsonl`" in last


def test_offline_the_hub_tasks_read_the_files_cached_by_an_earlier_download(tmp_path):
    """The Hub files as a download leaves them in the Hugging Face cache, read without a network: the files named
    (LiveCodeBench's test6.jsonl, GPQA's CSV, MathArena's Parquet shard) and LCB v6's contest window."""
    hub = tmp_path / "hf" / "hub"
    for repo, name, write in [
        (
            "livecodebench/code_generation_lite",
            "test6.jsonl",
            lambda p: jsonl(p, [lcb_row("in", SUM), lcb_row("out", SUM, date="2025-01-20T00:00:00")]),
        ),
        (
            "Idavidrein/gpqa",
            "gpqa_diamond.csv",
            lambda p: p.write_text(
                "Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3\n"
                "Q?,yes,no,never,maybe\n"
            ),
        ),
        (
            "MathArena/aime_2026",
            "data/train-00000-of-00001.parquet",
            lambda p: parquet(p, [{"problem_idx": 1, "answer": 277, "problem": "P"}]),
        ),
    ]:
        folder = hub / f"datasets--{repo.replace('/', '--')}"
        (folder / "refs").mkdir(parents=True)
        (folder / "refs" / "main").write_text("0" * 40)
        (folder / "snapshots" / ("0" * 40) / name).parent.mkdir(parents=True)
        write(folder / "snapshots" / ("0" * 40) / name)
    done = run_without_network(
        "print([[p.id for p in get(t).problems()] for t in ('lcb', 'gpqa', 'aime26')])", tmp_path / "hf"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[['lcb/in'], ['gpqa/1'], ['aime26/1']]"
