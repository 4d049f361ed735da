"""Judges: score a memento 0-10 against its block and say what to fix.

The rubric (the paper's six dimensions): formulas verbatim (0-3), numerical values (0-2), methods named (0-2),
validation (0-1), correctness / nothing unconfirmed (0-1), result-first structure (0-1); deductions for
hallucination, narrative, paraphrased formulas and missing critical values. A memento passes at >= 8.

`RuleJudge` is the offline judge: it checks that the block's key formulas and numbers survive verbatim, that the
memento states nothing absent from the block (numbers), that checks the block made are reported, and that the
result comes first. Its feedback lists the missing items, which the extractive compressor can act on.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import NamedTuple

from memento.data.atomize import PROTECTED
from memento.data.compress import CHECK, NARRATIVE, NUMBER, has_result, sentences

PASS = 8.0
METHODS = re.compile(
    r"\b(?:substitut\w*|eliminat\w*|factor\w*|complet\w* the square|quadratic formula|vieta\w*|induction|"
    r"contradiction|recurs\w*|symmetr\w*|modul\w*|mod|pigeonhole|inclusion[- ]exclusion|derivative|integra\w*|"
    r"law of (?:sines|cosines)|pythagor\w*|similar triangles|binomial|generating function|case\w*|"
    r"discriminant|expand\w*|simplif\w*|rationaliz\w*|dynamic programming|brute force|binary search)\b",
    re.IGNORECASE,
)
EQUATION = re.compile(r"[^\s=,;:]+(?:\s*=\s*[^\s=,;:]+)+")


class Verdict(NamedTuple):
    score: float  # 0-10
    parts: dict  # rubric dimension -> points
    feedback: str  # specific, actionable; empty when nothing to fix
    must_include: list[str]  # items from the block the memento should carry


class Judge(ABC):
    """Contract: `judge` never raises on odd text; a score it cannot establish is reported as 0 with feedback."""

    @abstractmethod
    def judge(self, problem: str, block: str, memento: str) -> Verdict: ...


def _norm(text: str) -> str:
    return " ".join(text.split())


class RuleJudge(Judge):
    def judge(self, problem: str, block: str, memento: str) -> Verdict:
        block_n, memo_n = _norm(block), _norm(memento)
        formulas = [_norm(m.group()) for m in PROTECTED.finditer(block)] + EQUATION.findall(block_n)
        key_formulas = list(dict.fromkeys(f for f in formulas if len(f) > 2))[-3:]
        tail = block_n[int(len(block_n) * 0.6) :]
        key_numbers = list(
            dict.fromkeys(
                NUMBER.findall(tail) + [n for s in sentences(block) if has_result(s) for n in NUMBER.findall(s)]
            )
        )[:8]
        methods = {m.lower() for m in METHODS.findall(block_n)}
        missing_formulas = [f for f in key_formulas if f not in memo_n]
        missing_numbers = [n for n in key_numbers if n not in NUMBER.findall(memo_n)]
        invented = [n for n in dict.fromkeys(NUMBER.findall(memo_n)) if n not in NUMBER.findall(block_n)]
        first = sentences(memento)[:1]
        parts = {
            "formulas": 3.0 * (1 - len(missing_formulas) / len(key_formulas)) if key_formulas else 3.0,
            "numbers": 2.0 * (1 - len(missing_numbers) / len(key_numbers)) if key_numbers else 2.0,
            "methods": 2.0 if not methods or any(m in memo_n.lower() for m in methods) else 0.0,
            "validation": 1.0 if not CHECK.search(block_n) or CHECK.search(memo_n) else 0.0,
            "correctness": 0.0 if invented else 1.0,
            "result_first": 1.0 if first and (NUMBER.search(first[0]) or "=" in first[0]) else 0.0,
        }
        deductions = min(len(invented), 3) + (1.0 if NARRATIVE.search(memo_n) else 0.0)
        score = max(0.0, min(10.0, round(sum(parts.values()) - deductions, 2)))
        feedback = []
        if missing_formulas:
            feedback.append("copy these formulas verbatim: " + "; ".join(missing_formulas))
        if missing_numbers:
            feedback.append("state these values: " + ", ".join(missing_numbers))
        if invented:
            feedback.append("remove values the block never states: " + ", ".join(invented))
        if parts["methods"] == 0:
            feedback.append("name the method used: " + ", ".join(sorted(methods)))
        if parts["validation"] == 0:
            feedback.append("report the check the block made and its outcome")
        if parts["result_first"] == 0:
            feedback.append("start with the result the block established")
        if NARRATIVE.search(memo_n):
            feedback.append("drop narration (I think / let me / wait); state facts")
        must = missing_formulas + missing_numbers
        if parts["methods"] == 0:
            must.append(sorted(methods)[0])
        if parts["validation"] == 0:
            checks = [s for s in sentences(block) if CHECK.search(s)]
            must += [" ".join(max(checks, key=lambda s: (bool(NUMBER.search(s)), -len(s))).split())] if checks else []
        return Verdict(score, parts, "; ".join(feedback), must)


MAXIMA = {"formulas": 3, "numbers": 2, "methods": 2, "validation": 1, "correctness": 1, "result_first": 1}


class LLMJudge(Judge):
    """The rubric asked of an LLM; the total is computed here from the parts (never the model's own sum)."""

    def __init__(self, backend, retries: int = 5):
        self.backend, self.retries = backend, retries

    def judge(self, problem: str, block: str, memento: str) -> Verdict:
        from memento.data.llm import ask, prompt, trace_usage

        text = prompt("judge", problem=problem, block=block, memento=memento)
        value, _ = ask(self.backend, text, parse_verdict, self.retries, 512)
        if value is None:
            trace_usage().repairs += 1
            return Verdict(0.0, {}, "the judge's reply could not be read", [])
        return value


LINES = {
    "FORMULAS": "formulas",
    "NUMERICAL_VALUES": "numbers",
    "METHODS": "methods",
    "VALIDATION": "validation",
    "CORRECTNESS": "correctness",
    "STRUCTURE": "result_first",
}
NUMBER_AFTER = r"\s*[:=]\s*-?\s*(\d+(?:\.\d+)?)"


def parse_verdict(reply: str) -> Verdict:
    """The judge's `SCORE: X/10` reply (the release's form, with a line per rubric dimension) or the same fields as
    JSON. The total is computed here from the dimensions less the deductions when they are all given (never the
    model's own sum); a reply with only `SCORE: X/10` counts as X."""
    from memento.data.llm import LLMOutputError, parse_json_object

    found = {LINES[k]: float(v) for k, v in re.findall(rf"\b({'|'.join(LINES)}){NUMBER_AFTER}", reply)}
    total = re.search(rf"\bSCORE{NUMBER_AFTER}\s*/\s*10", reply, re.I)
    if found or total:
        feedback = reply.split("FEEDBACK:", 1)[1].strip() if "FEEDBACK:" in reply else ""
        if len(found) < len(MAXIMA):
            if not total or not 0 <= float(total[1]) <= 10:
                raise LLMOutputError(f"the reply grades {sorted(found)} only, and gives no SCORE: X/10")
            return Verdict(float(total[1]), {}, feedback, [])
        deducted = re.search(rf"\bDEDUCTIONS{NUMBER_AFTER}", reply)
        data = {**found, "deductions": float(deducted[1]) if deducted else 0.0, "feedback": feedback}
    else:
        data = parse_json_object(reply)
    parts = {}
    for key, top in MAXIMA.items():
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= top:
            raise LLMOutputError(f"'{key}' must be a number 0-{top}, got {value!r}")
        parts[key] = float(value)
    deductions, feedback = data.get("deductions", 0), data.get("feedback", "")
    if isinstance(deductions, bool) or not isinstance(deductions, int | float) or not 0 <= deductions <= 10:
        raise LLMOutputError(f"'deductions' must be a number 0-10, got {deductions!r}")
    if not isinstance(feedback, str):
        raise LLMOutputError("'feedback' must be text")
    score = max(0.0, min(10.0, sum(parts.values()) - float(deductions)))
    return Verdict(round(score, 2), parts, feedback.strip(), [])
