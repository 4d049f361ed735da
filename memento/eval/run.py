"""`memento eval`: k samples per problem, checked by the task, with the KV each one cost.

Design choices:
- `results.jsonl` gets one line per (problem, sample) as soon as its batch finishes; `run.json` holds the settings.
  Re-running into the same folder skips every sample already there (an interrupted run resumes), and refuses a
  folder that holds a run with other settings. `--limit` is not a setting: raising it extends a run.
- Sample j of problem i (in task order) draws from `seed + i * k + j`, so a sample is the same whether it was
  generated in the first run or after a resume, and whatever else shared its batch.
- pass@1 is the mean over problems of the share of correct samples (the paper's "averaged over k samples"); pass@k
  counts a problem when any of its k samples is right; maj@k takes the answer extracted most often (ties: the first
  seen) and counts the problem when that answer is right. Extraction failures are reported apart.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from memento.engine.policy import EvictionPolicy
from memento.errors import MementoError
from memento.eval.tasks import Problem, get


@dataclass(frozen=True)
class EvalSettings:
    model: str
    task: str
    samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 4096
    seed: int = 0
    policy: dict = field(default_factory=lambda: asdict(EvictionPolicy(0)))

    def __post_init__(self):
        if self.samples < 1:
            raise MementoError(f"--n-samples {self.samples}: need at least one sample per problem")
        if self.samples > 1 and self.temperature == 0:
            raise MementoError(f"--n-samples {self.samples} with --temperature 0: greedy samples are all the same")


def evaluate(settings: EvalSettings, out: Path, limit: int | None = None, batch_size: int = 16,
             progress: bool = True) -> dict:  # fmt: skip
    """Generate, check and record every missing sample, then summarize the run into `summary.json`."""
    from tqdm.auto import tqdm

    from memento.engine.generate import ReferenceEngine

    task = get(settings.task)
    problems = task.problems()[:limit]
    if not problems:
        raise MementoError(f"task {settings.task}: no problems (--limit {limit})")
    records = _open(settings, out)
    done = {(r["problem"], r["sample"]) for r in records}
    todo = [(i, j) for i in range(len(problems)) for j in range(settings.samples) if (problems[i].id, j) not in done]
    generated = 0
    if todo:
        engine = ReferenceEngine.from_pretrained(settings.model, EvictionPolicy(**settings.policy))
        bar = tqdm(total=len(todo), desc=f"{settings.task}: {len(todo)} samples", unit="sample", disable=not progress)
        with (out / "results.jsonl").open("a") as sink:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                gens = _generate(engine, settings, problems, chunk, batch_size)
                for (i, j), g in zip(chunk, gens, strict=True):
                    record = _record(task, problems[i], j, g)
                    sink.write(json.dumps(record) + "\n")
                    records.append(record)
                sink.flush()
                generated += len(chunk)
                bar.update(len(chunk))
        bar.close()
    wanted = {p.id for p in problems}
    summary = summarize([r for r in records if r["problem"] in wanted], settings, task.about)
    summary["generated_now"] = generated
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _generate(engine, settings: EvalSettings, problems: list[Problem], chunk: list[tuple[int, int]], batch_size: int):
    """One engine call per run of consecutive samples: the engine seeds request r of a call with `seed + r`, so a
    run starting at sample g (= i * k + j) seeded with `settings.seed + g` gives every sample its own seed."""
    from memento.engine.sampling import Sampling

    k, gens, run = settings.samples, [], [chunk[0]]
    for prev, cur in zip(chunk, [*chunk[1:], None], strict=True):
        if cur is not None and cur[0] * k + cur[1] == prev[0] * k + prev[1] + 1:
            run.append(cur)
            continue
        first = run[0][0] * k + run[0][1]
        sampling = Sampling(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                            top_p=settings.top_p, top_k=settings.top_k, seed=settings.seed + first)  # fmt: skip
        gens += engine.generate([problems[i].prompt for i, _ in run], sampling, batch_size=batch_size)
        run = [cur]
    return gens


def _record(task, problem: Problem, sample: int, g) -> dict:
    verdict = task.check(problem, g.text)
    s = g.stats
    return {
        "problem": problem.id, "sample": sample, "reference": problem.reference, "answer": verdict.answer,
        "outcome": verdict.outcome, "finish_reason": g.finish_reason, "tokens": s.generated_tokens,
        "blocks": s.blocks, "evicted_tokens": s.evicted_tokens, "peak_kv_tokens": s.peak_kv_tokens,
        "auc_kv_ktok": sum(s.kv_timeline[1:]) / 1000, "peak_kv_bytes": s.peak_kv_bytes, "text": g.text,
    }  # fmt: skip


def _open(settings: EvalSettings, out: Path) -> list[dict]:
    """The records of an earlier run with the same settings (none for a new folder)."""
    out.mkdir(parents=True, exist_ok=True)
    meta, results = out / "run.json", out / "results.jsonl"
    mine = asdict(settings)
    if meta.exists():
        theirs = json.loads(meta.read_text())
        if theirs != mine:
            diff = ", ".join(f"{k}: {theirs.get(k)!r} there, {v!r} now" for k, v in mine.items() if theirs.get(k) != v)
            raise MementoError(f"{out} holds a run with other settings ({diff}); choose another --out")
    else:
        meta.write_text(json.dumps(mine, indent=1) + "\n")
    records = []
    lines = results.read_text().splitlines() if results.exists() else []
    for n, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if n < len(lines):
                raise MementoError(f"{results}:{n}: not a JSON line; the file is damaged") from None
            # the last line was cut by an interruption: drop it (its sample runs again)
            results.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def summarize(records: list[dict], settings: EvalSettings, about: str = "") -> dict:
    by: dict[str, list[dict]] = {}
    for r in records:
        by.setdefault(r["problem"], []).append(r)
    k = settings.samples
    pass1 = [sum(r["outcome"] == "correct" for r in rs) / len(rs) for rs in by.values()]
    passk = [any(r["outcome"] == "correct" for r in rs) for rs in by.values()]
    majk = [_majority(rs) for rs in by.values()]
    n, total = len(by), max(len(records), 1)

    def mean(key):
        return sum(r[key] for r in records) / total

    return {
        "task": settings.task, "about": about, "model": settings.model, "policy": settings.policy,
        "problems": n, "samples": k, "pass@1": sum(pass1) / max(n, 1), f"pass@{k}": sum(passk) / max(n, 1),
        f"maj@{k}": sum(majk) / max(n, 1), "pass@1_ci95": _interval(pass1),
        "no_answer": sum(r["outcome"] == "no_answer" for r in records) / total,
        "truncated": sum(r["finish_reason"] == "length" for r in records) / total,
        "tokens": mean("tokens"), "blocks": mean("blocks"), "peak_kv_tokens": mean("peak_kv_tokens"),
        "auc_kv_ktok": mean("auc_kv_ktok"), "evicted_tokens": mean("evicted_tokens"),
    }  # fmt: skip


def _majority(samples: list[dict]) -> bool:
    answered = [r for r in samples if r["answer"] is not None]
    if not answered:
        return False
    top, _ = Counter(r["answer"].replace(" ", "") for r in answered).most_common(1)[0]
    return next(r["outcome"] == "correct" for r in answered if r["answer"].replace(" ", "") == top)


def _interval(scores: list[float]) -> list[float]:
    """95% normal interval of the mean per-problem score (the problems are the sample)."""
    n = len(scores)
    if n < 2:
        return [0.0, 1.0]
    m = sum(scores) / n
    sd = math.sqrt(sum((s - m) ** 2 for s in scores) / (n - 1))
    half = 1.959964 * sd / math.sqrt(n)  # z of 95%, as toy.evaluate.Z95 (not imported: it loads the engine)
    return [max(0.0, m - half), min(1.0, m + half)]
