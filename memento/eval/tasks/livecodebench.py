"""LiveCodeBench code generation (`lcb`): contest problems from LeetCode, AtCoder and Codeforces, judged by tests.

Source: livecodebench/code_generation_lite on the Hugging Face Hub. It is a loading-script repository (which
`datasets` >= 4 no longer runs), so its files are read directly: `release_v6` is test.jsonl, test2.jsonl, ...,
test6.jsonl (1,055 problems, contests from May 2023 to April 2025); test6.jsonl holds the problems v6 added.
- `lcb`: all 1,055 problems of release_v6 (the six files), as the paper ran it.
- `lcb:2025-02-01..2025-05-01`: only the problems whose contest date is in [from, to) (either side may be left out;
  `lcb:..` is all of release_v6, like `lcb`). That one is "LCB v6" as often reported (e.g. Qwen3's "LiveCodeBench
  v6 (25.02-25.05)"); its problems all come from test6.jsonl (earlier files end in January 2025), so only that file
  is downloaded for it. Other windows read the six files.
- `lcb:/data/lcb.jsonl` (optionally `@2025-02-01..2025-05-01`): a local file (JSONL, JSON, Parquet or CSV) with
  the hub's fields: question_id, question_content, starter_code, contest_date, public_test_cases,
  private_test_cases, metadata (question_title, platform and difficulty are kept when present).

Tests: `public_test_cases` is a JSON list of `{"input", "output", "testtype"}`; `private_test_cases` is the same,
or, in the hub files, that JSON text pickled, zlib-compressed and base64-encoded. It is decoded by an unpickler that
refuses every global (so it can build plain values only, never call code), only when checking: `Problem.data` keeps the
tests as found (compact), so a resumed run needs nothing from the Hub. `metadata` names the method (`func_name`)
that functional (LeetCode) tests call.

The prompt is the statement and, for functional problems, the starter code to complete; stdin problems ask for a
program that reads standard input. The answer is the last ```python block after the reasoning
(`memento.eval.code.extract_code`); it is right when it passes every public and private test (`run_tests`).
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import re
import zlib
from functools import cache

from memento.core.errors import MementoError
from memento.eval.check import Verdict
from memento.eval.tasks import Problem, Task, register
from memento.eval.tasks.source import HubSource, rows

REPO = "livecodebench/code_generation_lite"
RELEASE_V6 = ("test.jsonl", "test2.jsonl", "test3.jsonl", "test4.jsonl", "test5.jsonl", "test6.jsonl")
V6_WINDOW = ("2025-02-01", "2025-05-01")  # the common "v6 (25.02-25.05)" window: `lcb:2025-02-01..2025-05-01`
FIELDS = (
    "question_id",
    "question_content",
    "starter_code",
    "contest_date",
    "public_test_cases",
    "private_test_cases",
    "metadata",
)
WINDOW = re.compile(r"(\d{4}-\d\d-\d\d)?\.\.(\d{4}-\d\d-\d\d)?")
ANSWER = "Reason step by step, then give your final solution as one complete Python program in a ```python block."
STDIN = "Write a Python program that reads the input from standard input and prints the answer to standard output."
STARTER = "Complete this starter code (the tests call the method of `Solution` on their inputs):"


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module, name):  # the only way a pickle reaches code: refuse it
        raise pickle.UnpicklingError(f"test data may not refer to {module}.{name}")


def decode_tests(value: object) -> list[dict]:
    """A test list as stored: a list, its JSON text, or the hub's base64 of zlib of a pickled JSON text."""
    if isinstance(value, list):
        return value
    text = str(value or "").strip()
    if not text or text.startswith("["):
        return json.loads(text or "[]")
    payload = _NoGlobals(io.BytesIO(zlib.decompress(base64.b64decode(text)))).load()
    return json.loads(payload) if isinstance(payload, str | bytes) else payload


def encode_tests(tests: list[dict]) -> str:
    """The hub's compact encoding of a test list (the inverse of `decode_tests`)."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()


def parse_option(option: str) -> tuple[str, tuple[str | None, str | None] | None]:
    """`lcb`'s option as (local path or "", contest-date window or None for all)."""
    if not option:
        return "", None  # all of release_v6, as the paper ran it
    path, _, window = option.rpartition("@") if "@" in option else ("", "", option)
    if m := WINDOW.fullmatch(window):
        return path, None if m.groups() == (None, None) else m.groups()
    return option, None


def _in(date: object, window: tuple[str | None, str | None] | None) -> bool:
    day = str(date)[:10]
    return window is None or ((window[0] is None or day >= window[0]) and (window[1] is None or day < window[1]))


@cache
def _problems(option: str) -> tuple[Problem, ...]:
    path, window = parse_option(option)
    files = ("test6.jsonl",) if not path and window == V6_WINDOW else RELEASE_V6
    found = []
    for row in rows(path, HubSource("lcb", REPO, files, FIELDS)):
        if not _in(row["contest_date"], window):
            continue
        meta = row["metadata"] if isinstance(row["metadata"], dict) else json.loads(row["metadata"] or "{}")
        starter = (row["starter_code"] or "").strip()
        how = f"{STARTER}\n\n```python\n{starter}\n```" if starter else STDIN
        data = {
            "public": decode_tests(row["public_test_cases"]),
            "private": row["private_test_cases"],
            "func_name": meta.get("func_name"),
            "contest_date": str(row["contest_date"])[:10],
            **{k: row.get(k) for k in ("question_title", "platform", "difficulty")},
        }
        prompt = f"{str(row['question_content']).strip()}\n\n{how}\n\n{ANSWER}"
        found.append(Problem(f"lcb/{row['question_id']}", prompt, "all tests pass", data))
    return tuple(found)


@register("lcb")
class LiveCodeBench(Task):
    votes = False  # two right programs are rarely the same text: no maj@k

    def __init__(self, option: str = ""):
        self.option = option
        self.name = f"lcb:{option}" if option else "lcb"
        path, window = parse_option(option)
        if window is not None:
            span = f"contests in [{window[0] or '...'}, {window[1] or '...'})"
        else:
            span = "all dates" if path else "all 1,055 problems"
        self.about = f"LiveCodeBench code generation, {span} ({path or REPO + ' release_v6'})"

    def problems(self) -> list[Problem]:
        return list(_problems(self.option))

    def check(self, problem: Problem, completion: str) -> Verdict:
        from memento.eval.code import extract_code, run_tests

        code = extract_code(completion)
        if code is None:
            return Verdict(None, False)
        try:
            tests = problem.data["public"] + decode_tests(problem.data["private"])
        except Exception as e:  # corrupt test data: a broken benchmark, not a wrong answer
            raise MementoError(f"task {self.name}, problem {problem.id}: unreadable private tests ({e})") from e
        return Verdict(code, run_tests(code, tests, func_name=problem.data["func_name"]).all_passed)
