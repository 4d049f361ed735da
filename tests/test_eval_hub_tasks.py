"""The paper's benchmarks (the eleven competitions of Comp. Math, MATH-500, GPQA-Diamond, LiveCodeBench) read from
local files with the Hub's field names, their checkers on known right, wrong and missing answers, the registry's lists
of them, and the errors for bad files and no network."""

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
from memento.eval.tasks import (
    COMP_MATH,
    FAMILIES,
    MATH_INSTRUCTION,
    PAPER_TASKS,
    competitions,
    get,
    is_comp_math,
    livecodebench,
    source,
)
from memento.eval.tasks.gpqa import shuffle
from memento.eval.tasks.livecodebench import RELEASE_V6, decode_tests, encode_tests, parse_option


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
    unboxed = task.check(p33, "</think>The answer is 33.")  # no box: the short last line is the answer (the paper)
    assert unboxed.answer == "The answer is 33" and unboxed.outcome == "wrong"


def test_aime_reads_h4_parquet_and_falls_back_to_row_numbers(tmp_path):
    h4 = [{"id": 60, "problem": "P", "solution": "S", "answer": "204", "url": "u", "year": "2024"}]
    assert [p.id for p in get("aime24:" + parquet(tmp_path / "a.parquet", h4)).problems()] == ["aime24/60"]
    bare = [{"problem": "P1", "answer": "1"}, {"problem": "P2", "answer": "2"}]
    assert [p.id for p in get("aime26:" + jsonl(tmp_path / "b.jsonl", bare)).problems()] == ["aime26/1", "aime26/2"]


# the other competitions of Comp. Math (MathArena's layout)


def matharena_rows() -> list[dict]:
    """Rows as MathArena's Parquet holds them: problem_idx int, answer a (LaTeX) string, problem_type a list."""
    return [
        {"problem_idx": 2, "problem": "Find $r$.", "answer": "\\frac{9}{4}", "problem_type": ["Algebra"]},
        {"problem_idx": 1, "problem": "Find $s$.", "answer": "2\\sqrt{3}", "problem_type": ["Geometry", "Algebra"]},
        {"problem_idx": 3, "problem": "Count them.", "answer": "2025", "problem_type": ["Combinatorics"]},
    ]


NEW = ("hmmt_feb23", "hmmt_feb24", "hmmt_feb25", "hmmt_feb26", "hmmt_nov25", "brumo25", "smt25", "cmimc25")


@pytest.mark.parametrize("family", NEW)
def test_competitions_read_matharena_parquet_and_check_latex_answers(tmp_path, family):
    path = parquet(tmp_path / "train-00000-of-00001.parquet", matharena_rows())
    task = get(f"{family}:{path}")
    assert task.name == f"{family}:{path}" and task.about.endswith(f"problems ({path})")
    frac, root, count = task.problems()
    assert [frac.id, root.id, count.id] == [f"{family}/2", f"{family}/1", f"{family}/3"]  # problem_idx, file order
    assert frac.prompt == f"Find $r$.\n\n{MATH_INSTRUCTION}" and frac.prompt.endswith(MATH_INSTRUCTION)
    assert (frac.reference, root.reference) == ("\\frac{9}{4}", "2\\sqrt{3}")
    assert root.data == {"problem_type": ["Geometry", "Algebra"]}
    assert task.check(frac, "<think>\\boxed{3}</think>So $r = \\boxed{\\frac{9}{4}}$.").outcome == "correct"
    assert task.check(frac, "</think>\\boxed{2.25}").outcome == "correct"  # by value
    assert task.check(frac, "</think>\\boxed{\\frac{4}{9}}").outcome == "wrong"
    assert task.check(root, "</think>\\boxed{2\\sqrt{3}}").outcome == "correct"
    assert task.check(root, "</think>\\boxed{3\\sqrt{2}}").outcome == "wrong"
    assert task.check(count, "</think>\\boxed{2024}").outcome == "wrong"
    assert task.check(count, "</think>The answer is 2025.").outcome == "wrong"  # no box: the last line, as a whole


def test_competitions_read_jsonl_and_name_competition_count_and_source(tmp_path):
    path = jsonl(tmp_path / "smt.jsonl", matharena_rows())
    assert [p.id for p in get(f"smt25:{path}").problems()] == ["smt25/2", "smt25/1", "smt25/3"]
    assert get("smt25").about == "SMT 2025: 53 problems (MathArena/smt_2025)"
    assert get("hmmt_feb26").about == "HMMT February 2026: 33 problems (MathArena/hmmt_feb_2026)"
    assert get("hmmt_nov25").about == "HMMT November 2025: 30 problems (MathArena/hmmt_nov_2025)"
    assert get("cmimc25").about == "CMIMC 2025: 40 problems (MathArena/cmimc_2025)"
    assert get("brumo25").about == "BrUMO 2025: 30 problems (MathArena/brumo_2025)"
    assert get("aime24").about == "AIME 2024: 30 problems (HuggingFaceH4/aime_2024)"  # as before the rename
    assert get(f"hmmt_feb23:{path}").about == f"HMMT February 2023: 30 problems ({path})"
    repos = {c.repo for c in competitions.COMPETITIONS.values()}
    assert len(repos) == 11 and {f"MathArena/{r}" for r in ("hmmt_feb_2024", "hmmt_feb_2025")} <= repos


# the paper's tasks


def test_comp_math_and_paper_tasks_are_registered_and_built_without_downloading(monkeypatch):
    downloads = []
    monkeypatch.setattr(source, "_download", lambda hub: downloads.append(hub.repo) or [])
    assert len(COMP_MATH) == len(set(COMP_MATH)) == 11 and COMP_MATH[:3] == ("aime24", "aime25", "aime26")
    assert COMP_MATH[-3:] == ("brumo25", "smt25", "cmimc25")
    assert len(PAPER_TASKS) == len(set(PAPER_TASKS)) == 14 and PAPER_TASKS[11:] == ("math500", "gpqa", "lcb")
    assert PAPER_TASKS[:11] == COMP_MATH
    tasks = [get(name) for name in PAPER_TASKS]
    assert set(PAPER_TASKS) <= set(FAMILIES)  # each registered by its own name (not only accepted by get)
    assert [t.name for t in tasks] == list(PAPER_TASKS) and all(t.about for t in tasks)
    assert downloads == []  # building a task reads nothing: only problems() does
    competitions._problems.cache_clear()
    try:
        assert get("cmimc25").problems() == [] and downloads == ["MathArena/cmimc_2025"]  # the hook is the real path
    finally:
        competitions._problems.cache_clear()


def test_is_comp_math_counts_local_copies_and_nothing_else():
    assert all(is_comp_math(name) for name in COMP_MATH)
    assert is_comp_math("hmmt_feb25:/x.jsonl") and is_comp_math("aime24:/d/aime@2024.parquet")
    assert not any(is_comp_math(name) for name in ("math500", "gpqa", "lcb", "lcb:2025-02-01..", "champ", "hmmt"))
    assert not is_comp_math("math500:/data/hmmt_feb25.jsonl")


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
    assert parse_option("") == ("", None)  # all of release_v6, as the paper ran it
    assert parse_option("2025-02-01..2025-05-01") == ("", ("2025-02-01", "2025-05-01"))  # "LCB v6 (25.02-25.05)"
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


def test_lcb_by_default_is_all_of_release_v6_and_the_v6_window_reads_test6_only(monkeypatch, tmp_path):
    """`lcb` is every problem of the six release_v6 files, whatever its date (the paper's 1,055); the common
    `lcb:2025-02-01..2025-05-01` downloads test6.jsonl only and keeps its window."""
    dates = {  # one file of release_v6 each, contest dates as the hub's files have them
        "test.jsonl": "2023-05-07T00:00:00",
        "test2.jsonl": "2023-10-01T00:00:00",
        "test3.jsonl": "2024-04-06T00:00:00",
        "test4.jsonl": "2024-08-03T00:00:00",
        "test5.jsonl": "2025-01-18T00:00:00",
        "test6.jsonl": "2025-03-01T00:00:00",
    }
    files = {name: tmp_path / name for name in RELEASE_V6}
    for n, (name, date) in enumerate(dates.items()):
        rows = [lcb_row(f"f{n}", SUM, date=date)] + ([lcb_row("late", SUM, date="2025-05-02")] if n == 5 else [])
        jsonl(files[name], rows)
    asked = []

    def download(hub):
        asked.append(hub.files)
        return [files[name] for name in hub.files]

    monkeypatch.setattr(source, "_download", download)
    livecodebench._problems.cache_clear()
    try:
        task = get("lcb")
        assert task.about == f"LiveCodeBench code generation, all 1,055 problems ({livecodebench.REPO} release_v6)"
        every = ["lcb/f0", "lcb/f1", "lcb/f2", "lcb/f3", "lcb/f4", "lcb/f5", "lcb/late"]
        assert [p.id for p in task.problems()] == every
        assert asked == [RELEASE_V6]
        assert [p.id for p in get("lcb:..").problems()] == [p.id for p in task.problems()]  # the same selection
        window = get("lcb:2025-02-01..2025-05-01")
        assert "contests in [2025-02-01, 2025-05-01)" in window.about
        assert [p.id for p in window.problems()] == ["lcb/f5"] and asked[-1] == ("test6.jsonl",)
        assert [p.id for p in get("lcb:2025-01-01..").problems()] == ["lcb/f4", "lcb/f5", "lcb/late"]
        assert asked[-1] == RELEASE_V6
    finally:
        livecodebench._problems.cache_clear()


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
    (LiveCodeBench's six release_v6 files, GPQA's CSV, MathArena's Parquet shards), all of release_v6 for `lcb` and
    LCB v6's contest window for `lcb:2025-02-01..2025-05-01`."""
    lcb = {f"test{n}.jsonl": [lcb_row(f"v{n}", SUM, date=f"2024-0{n}-01T00:00:00")] for n in range(2, 6)}
    lcb["test.jsonl"] = [lcb_row("v1", SUM, date="2023-05-07T00:00:00")]
    lcb["test6.jsonl"] = [lcb_row("in", SUM), lcb_row("out", SUM, date="2025-05-20T00:00:00")]
    shard = "data/train-00000-of-00001.parquet"
    hmmt = [{"problem_idx": 7, "problem": "P", "answer": "\\frac{9}{4}", "problem_type": ["Algebra"]}]
    repos = {
        "livecodebench/code_generation_lite": {name: lambda p, r=r: jsonl(p, r) for name, r in lcb.items()},
        "Idavidrein/gpqa": {
            "gpqa_diamond.csv": lambda p: p.write_text(
                "Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3\n"
                "Q?,yes,no,never,maybe\n"
            )
        },
        "MathArena/aime_2026": {shard: lambda p: parquet(p, [{"problem_idx": 1, "answer": 277, "problem": "P"}])},
        "MathArena/hmmt_feb_2026": {shard: lambda p: parquet(p, hmmt)},
    }
    for repo, files in repos.items():
        folder = tmp_path / "hf" / "hub" / f"datasets--{repo.replace('/', '--')}"
        (folder / "refs").mkdir(parents=True)
        (folder / "refs" / "main").write_text("0" * 40)
        for name, write in files.items():
            (folder / "snapshots" / ("0" * 40) / name).parent.mkdir(parents=True, exist_ok=True)
            write(folder / "snapshots" / ("0" * 40) / name)
    tasks = ("lcb", "lcb:2025-02-01..2025-05-01", "gpqa", "aime26", "hmmt_feb26")
    done = run_without_network(f"print([[p.id for p in get(t).problems()] for t in {tasks}])", tmp_path / "hf")
    assert done.returncode == 0, done.stderr
    lcb_all = ["lcb/v1", "lcb/v2", "lcb/v3", "lcb/v4", "lcb/v5", "lcb/in", "lcb/out"]
    assert done.stdout.strip() == str([lcb_all, ["lcb/in"], ["gpqa/1"], ["aime26/1"], ["hmmt_feb26/7"]])
