"""Answer checking: what a completion answers, and whether that is right (the paper's method, App. A.2.2).

Every sample ends in one of three outcomes, counted apart: `correct`, `wrong`, or `no_answer` (nothing could be
extracted), so that a model that never finishes is not mistaken for one that reasons badly.

- The answer is looked for after the last `</think>` when there is one (the reasoning may box intermediate results).
- Math extraction, first kind that yields something: the last `\\boxed{...}` (braces balanced); a "final answer"
  phrase ("Final Answer: The final answer is $X$", "**Final Answer** X"); the last `$...$`; the last line when it is
  short. A `\\boxed{` that is never closed (a cut-off generation) gives no answer.
- Math comparison: equal after Hendrycks-style string normalisation (`normalize`), or equal for SymPy
  (`same_sympy`: both sides parsed with `latex2sympy2_extended`, then `==` or `simplify(a - b) == 0`), which runs
  in a worker process and counts as "not equal" after 5 s. `Verdict.math_verify` records what `math-verify`
  (`same_math`) says of the same extracted answer, so that runs can report where the two methods disagree.
- Multiple choice: the letter in the last `\\boxed{}` (`C`, `(C)`, `\\text{C}`), else the last "answer is (C)" /
  "Answer: C".

docs/answer-checking.md explains the method and lists tricky cases with both verdicts.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import subprocess
import sys
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

THINK_END = "</think>"
CHOICE = re.compile(r"answer\s*(?:is|:)\s*[:(\s]*\(?\s*([A-Z])\s*\)?(?![A-Za-z])", re.I)
FINAL_ANSWER = re.compile(r"final\s+answer", re.I)
INLINE_MATH = re.compile(r"\$+([^$]+)\$+")
SHORT_LINE = 40  # characters: a last line this short may be a bare answer ("42", "x = 3")
SYMPY_TIMEOUT = 5.0  # seconds


@dataclass(frozen=True)
class Verdict:
    answer: str | None  # what was extracted; None: nothing to extract
    correct: bool
    math_verify: bool | None = None  # math checks: whether math-verify also judges `answer` correct

    @property
    def outcome(self) -> str:
        return "no_answer" if self.answer is None else "correct" if self.correct else "wrong"


def answer_section(completion: str) -> str:
    """The part of a completion after its reasoning (all of it when there is no `</think>`)."""
    return completion.rsplit(THINK_END, 1)[1] if THINK_END in completion else completion


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`), with nested braces; None when there is none or it
    is not closed."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i].strip()
    return None


# ---- extraction ----


def _clean(text: str) -> str | None:
    text = re.sub(r"^\s*\\[\[(]|\\[\])]\s*$", "", text).strip().rstrip(".").strip()
    return text or None


def _final_answer(text: str) -> str | None:
    """X in "Final Answer: The final answer is $X$. I hope it is correct.", "**Final Answer** X", "final answer: X"."""
    found = list(FINAL_ANSWER.finditer(text))
    if not found:
        return None
    rest = re.sub(r"^[\s*#:]*(?:is\b[\s*:]*)?", "", text[found[-1].end() :])
    line = next((line for line in rest.splitlines() if line.strip()), "")
    line = re.split(r"I hope it is correct", line, flags=re.I)[0]
    math = INLINE_MATH.search(line)
    return _clean(math.group(1) if math else line)


def _last_inline_math(text: str) -> str | None:
    found = INLINE_MATH.findall(text)
    return _clean(found[-1]) if found else None


def _last_short_line(text: str) -> str | None:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return _clean(lines[-1]) if lines and len(lines[-1]) <= SHORT_LINE else None


def extract_answer(completion: str) -> str | None:
    """A math answer: the last box, else a "final answer" phrase, else the last `$...$`, else a short last line."""
    text = answer_section(completion)
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    if re.search(r"\\(?:boxed|fbox)\s*\{", text):  # opened, never closed: the generation was cut off
        return None
    for find in (_final_answer, _last_inline_math, _last_short_line):
        if (found := find(text)) is not None:
            return found
    return None


# ---- comparison: Hendrycks-style strings, then SymPy ----


def _tidy(text: str) -> str:
    """The normalisation of `normalize`, whitespace kept (so that SymPy can still read `\\pi r`)."""
    s = text.strip()
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\(?:left|right|displaystyle)\b|(?<!\\)\\[!,;:]", "", s)
    s = re.sub(r"(?<!\\)\\ ", " ", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?", "", s)  # degrees
    s = re.sub(r"\\?[$%]", "", s)
    s = re.sub(r"(\d)\s*\\(?:text|mbox)\s*\{[^{}]*\}(?:\^\{?\d\}?)?\s*$", r"\1", s)  # a final unit after a number
    s = re.sub(r"\\(?:text|textbf|mbox|mathrm)\s*\{([^{}]*)\}", r"\1", s)  # other text: its content
    s = re.sub(r"\\frac\s*(\w)", r"\\frac{\1}", s)  # \frac12 -> \frac{1}2
    s = re.sub(r"\\frac(\{[^{}]*\})\s*(\w)", r"\\frac\1{\2}", s)  # \frac{1}2 -> \frac{1}{2}
    s = re.sub(r"\\sqrt\s*(\w)", r"\\sqrt{\1}", s)
    s = re.sub(r"(\d)\{,\}(?=\d{3}(?!\d))", r"\1", s)  # 1{,}000
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s.replace(" ", "")):  # 1,000 (a whole number only)
        s = s.replace(",", "")
    s = re.sub(r"(^|[^\w.}])\.(\d)", r"\g<1>0.\2", s)  # .5 -> 0.5
    if (m := re.fullmatch(r"([^=]*)=([^=]*)", s)) and len(m.group(1).strip()) <= 2:  # x = 3 -> 3
        s = m.group(2)
    if m := re.fullmatch(r"\s*(-?\d+)\s*/\s*(\d+)\s*", s):
        s = f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}"
    return s.strip().rstrip(".").strip()


def normalize(text: str) -> str:
    """Hendrycks-style (MATH `strip_string`) normalisation of an answer string."""
    return re.sub(r"\s+", "", _tidy(text))


def _sympy_equal(a: str, b: str) -> bool:
    """Whether SymPy reads two LaTeX strings as the same thing (in the worker process: it may hang)."""
    import sympy
    from latex2sympy2_extended import latex2sympy

    try:
        x, y = (latex2sympy(s, normalization_config=None) for s in (a, b))
        return bool(x == y or sympy.simplify(x - y) == 0)
    except Exception:  # unreadable LaTeX, or a difference SymPy cannot form (sets, equations): not equal
        return False


def _serve() -> None:
    """The worker's loop: a JSON `[a, b]` per line in, `1` or `0` per line out."""
    out, sys.stdout = sys.stdout, sys.stderr  # a stray print must not break the protocol
    _sympy_equal("1", "1")  # import and warm up before saying ready
    print("ready", file=out, flush=True)
    for line in sys.stdin:
        print(int(_sympy_equal(*json.loads(line))), file=out, flush=True)


class _Worker:
    """One reusable process for SymPy comparisons; killed (and started afresh next time) when one runs too long.
    A process, not `signal.alarm`: that works only in the main thread, and not inside a long C call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._pid = os.getpid()  # a forked copy of this object must not share the parent's worker

    def _start(self) -> subprocess.Popen:
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        code = "from memento.eval.check import _serve; _serve()"
        proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        if proc.stdout.readline().strip() != "ready":
            proc.kill()
            proc.wait()
            raise RuntimeError("the SymPy worker process did not start (see its stderr above)")
        return proc

    def equal(self, a: str, b: str, timeout: float) -> bool:
        with self._lock:
            if self._proc is None or self._pid != os.getpid() or self._proc.poll() is not None:
                self._proc, self._pid = self._start(), os.getpid()
            proc = self._proc
            proc.stdin.write(json.dumps([a, b]) + "\n")
            proc.stdin.flush()
            if select.select([proc.stdout], [], [], timeout)[0] and (reply := proc.stdout.readline()):
                return reply.strip() == "1"
            self.close()  # too slow (or dead): not equal
            return False

    def close(self) -> None:
        if self._proc is not None and self._pid == os.getpid():
            self._proc.kill()
            self._proc.wait()
            self._proc = None


_WORKER = _Worker()
atexit.register(_WORKER.close)


@lru_cache(maxsize=4096)
def same_sympy(a: str, b: str, timeout: float = SYMPY_TIMEOUT) -> bool:
    """Whether SymPy finds two LaTeX answers equal; False when it cannot tell within `timeout` seconds."""
    return bool(a.strip() and b.strip()) and _WORKER.equal(a, b, timeout)


def same_answer(answer: str, reference: str, timeout: float = SYMPY_TIMEOUT) -> bool:
    """The paper's comparison: equal normalised strings, or SymPy equivalence (tried only when the strings differ)."""
    return normalize(answer) == normalize(reference) or same_sympy(_tidy(answer), _tidy(reference), timeout)


# ---- math-verify (the previous method, kept for comparison) ----


def _normal(text: str) -> str:
    text = re.sub(r"\\(?:text|mathrm|textbf)\{([^{}]*)\}", r"\1", text)
    text = re.sub(r"\\[,;!: ]|\\left|\\right|\$", "", text)
    return re.sub(r"\s+", "", text).rstrip(".").lower()


def same_math(answer: str, reference: str) -> bool:
    """Whether math-verify finds two math answers (LaTeX or plain) equivalent; normalised strings when it cannot
    parse either side."""
    from math_verify import parse, verify

    try:
        gold, pred = parse(f"\\boxed{{{reference}}}"), parse(f"\\boxed{{{answer}}}")
        if gold and pred:
            return bool(verify(gold, pred))
    except Exception:  # math-verify raises on inputs it cannot handle (and on timeouts): fall back to strings
        pass
    return _normal(answer) == _normal(reference)


def check_math(completion: str, reference: str) -> Verdict:
    """The paper's check (`extract_answer`, `same_answer`), with math-verify's opinion of the same answer."""
    answer = extract_answer(completion)
    if answer is None:
        return Verdict(None, False)
    return Verdict(answer, same_answer(answer, reference), same_math(answer, reference))


# ---- multiple choice ----


def choice_letter(completion: str, letters: str = "ABCD") -> str | None:
    """The option a completion picks, or None."""
    text = answer_section(completion)
    boxed = last_boxed(text)
    if boxed is not None:
        letter = _normal(boxed).strip("()").upper()
        return letter if len(letter) == 1 and letter in letters else None
    picks = [m.group(1).upper() for m in CHOICE.finditer(text) if m.group(1).upper() in letters]
    return picks[-1] if picks else None


def check_choice(completion: str, reference: str, letters: str = "ABCD") -> Verdict:
    letter = choice_letter(completion, letters)
    return Verdict(letter, letter is not None and letter == reference.strip().upper())
