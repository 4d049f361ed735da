"""`memento eval`: k samples per problem, checked by the task, with the KV each one cost.

Design choices:
- `results.jsonl` gets one line per (problem, sample) as soon as its batch finishes; `run.json` holds the settings.
  Re-running into the same folder skips every sample already there (an interrupted run resumes), and refuses a
  folder that holds a run with other settings. `--limit` is not a setting: raising it extends a run.
- Sample j of a problem draws from its own seed, a hash of (`--seed`, the problem's id, j): the same whether it was
  generated in the first run or after a resume, and whatever else shared its batch (on the reference engine; vLLM's
  batched kernels may differ in the last bits), and unrelated to the samples of any other `--seed`.
- pass@1 is the mean over problems of the share of correct samples (the paper's "averaged over k samples"), with a
  95% interval (Wilson while every problem scores 0 or 1, else normal over problems: `memento.core.intervals`); pass@k
  counts a problem when any of its k samples is right; maj@k votes among the extracted answers, the right ones
  (equivalent to the reference, however written) counting as one answer, the wrong ones grouped by their text
  without spaces (ties: the first seen); tasks whose answers are programs have no maj@k. Extraction failures are
  reported apart.
- Two engines behind one interface (`memento.eval.backends`, which also runs base models): the reference engine
  and vLLM. The engine is a setting: one run folder never mixes them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import MISSING, asdict, fields
from pathlib import Path

from memento.core.errors import MementoError
from memento.core.format import THINK_END, THINK_START
from memento.core.intervals import Difference, mean_interval, paired_scores, standard_error, wilson
from memento.eval import backends
from memento.eval.check import Verdict
from memento.eval.protocol import model_context
from memento.eval.settings import EvalSettings
from memento.eval.tasks import Problem, Task, get


def evaluate(
    settings: EvalSettings,
    out: Path,
    limit: int | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    device: str | None = None,
    save_every: int | None = None,
    server: str | None = None,
) -> dict:
    """Generate, check and record every missing sample, then summarize the run into `summary.json`. `batch_size`:
    the reference engine's batch slots (default 16), or vLLM's samples per call (default 256; vLLM schedules within a
    call); `save_every`: samples per engine call, saved after each (default: `batch_size`; more lets the reference
    engine refill its slots as requests finish); `device`: the reference engine's (default: cuda when there is one);
    `server`: the URL of the running server (engine `server`), whose /metrics are polled into `kv_live.jsonl`."""
    from tqdm.auto import tqdm

    task, problems = problems_of(settings.task, limit)
    records = _open(settings, out)
    done = {(r["problem"], r["sample"]) for r in records}
    todo = [(p, j) for p in problems for j in range(settings.samples) if (p.id, j) not in done]
    generated, seconds = 0, 0.0
    if todo:
        prompts = [p.prompt for p, _ in todo]
        backend: backends.Backend
        if settings.engine == "server":
            if not server:
                raise MementoError("--engine server needs --server URL (a running `memento serve`)")
            backend = backends.ServerBackend(settings, prompts, server, out)
        elif settings.engine == "vllm":
            backend = backends.VLLMBackend(settings, prompts, device)
        else:
            backend = backends.ReferenceBackend(settings, prompts, device)
        size = batch_size or (256 if settings.engine == "vllm" else 16)
        chunk = save_every or size
        bar = tqdm(total=len(todo), desc=f"{settings.task}: {len(todo)} samples", unit="sample", disable=not progress)
        try:
            with (out / "results.jsonl").open("a") as sink:
                for start in range(0, len(todo), chunk):
                    part = todo[start : start + chunk]
                    seeds = [sample_seed(settings.seed, p.id, j) for p, j in part]
                    began = time.perf_counter()
                    samples = backend.generate([p.prompt for p, _ in part], seeds, size)
                    seconds += time.perf_counter() - began
                    for (p, j), seed, sample in zip(part, seeds, samples, strict=True):
                        line = record(task, p, j, seed, sample, settings.answer_in_open_think)
                        sink.write(json.dumps(line) + "\n")
                        records.append(line)
                    sink.flush()
                    generated += len(part)
                    bar.update(len(part))
        finally:
            bar.close()
            backend.close()
    summary = summarize(records_of(records, problems), settings, task.about, votes=task.votes)
    if (out / "kv_live.jsonl").exists():
        summary["live_kv"] = live_check(out, records)
    summary["generated_now"] = generated
    summary["seconds_now"] = seconds  # generating them (tokens/s: their tokens over it)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def live_check(out: Path, records: list[dict]) -> dict:
    """The peaks `/metrics` showed live against the replayed ones, over the samples the poll log saw."""
    from memento.eval.live import compare, read_polls

    polls = read_polls(out / "kv_live.jsonl")
    simulated = {r["request"]: r["peak_kv_tokens"] for r in records if r.get("request") in polls}
    rows = compare(polls, simulated)
    (out / "kv_live_compare.json").write_text(json.dumps(rows, indent=1) + "\n")
    worst = max((r["relative_difference"] for r in rows), default=None)
    return {"requests": len(rows), "max_relative_difference": worst, "missing": len(records) - len(rows)}


def problems_of(name: str, limit: int | None = None) -> tuple[Task, list[Problem]]:
    """The task called `name` and its first `limit` problems, checked for distinct ids (samples are keyed by them)."""
    if limit is not None and limit < 1:
        raise MementoError(f"--limit {limit}: give a positive number of problems")
    task = get(name)
    problems = task.problems()[:limit]
    if not problems:
        raise MementoError(f"task {name}: no problems")
    seen: dict[str, int] = {}
    for n, p in enumerate(problems, 1):
        if p.id in seen:
            raise MementoError(
                f"task {name}: problems {seen[p.id]} and {n} have the same id {p.id!r}; give every problem its own id"
            )
        seen[p.id] = n
    return task, problems


def records_of(records: list[dict], problems: list[Problem]) -> list[dict]:
    """The records of `problems`, in task order (a run folder may hold more, from a larger --limit)."""
    order = {p.id: n for n, p in enumerate(problems)}
    return sorted((r for r in records if r["problem"] in order), key=lambda r: (order[r["problem"]], r["sample"]))


def read_records(folder: Path) -> list[dict]:
    """The records of the run in `folder` (its `results.jsonl`), as written."""
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


def sample_seed(seed: int, problem: str, sample: int) -> int:
    """Sample `sample` of `problem`'s seed under `--seed seed` (31 bits: every engine takes it)."""
    digest = hashlib.sha256(f"{seed}/{problem}/{sample}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def open_think(text: str) -> bool:
    """Whether a completion was cut off inside its reasoning: `<think>` without `</think>`."""
    return THINK_START in text and THINK_END not in text


def record(
    task, problem: Problem, sample: int, seed: int, s: backends.Sample, answer_in_open_think: bool = False
) -> dict:
    """One line of `results.jsonl`. A completion cut off inside `<think>` has no answer (a boxed intermediate
    result is not a final one) unless `answer_in_open_think`."""
    try:
        cut = open_think(s.text) and not answer_in_open_think
        verdict = Verdict(None, False) if cut else task.check(problem, s.text)
    except MementoError:
        raise
    except Exception as e:  # a broken problem (test data, reference): name it, rather than a bare traceback
        raise MementoError(f"task {task.name}, problem {problem.id}: checking failed ({type(e).__name__}: {e})") from e
    return {
        "problem": problem.id,
        "sample": sample,
        "seed": seed,
        "reference": problem.reference,
        "answer": verdict.answer,
        "outcome": verdict.outcome,
        "math_verify": verdict.math_verify,  # the other checker's verdict (math tasks)
        **s.record(),
    }


_DEFAULTS = {f.name: f.default for f in fields(EvalSettings) if f.default is not MISSING}


def _open(settings: EvalSettings, out: Path) -> list[dict]:
    """The records of an earlier run with the same settings (none for a new folder)."""
    out.mkdir(parents=True, exist_ok=True)
    meta, results = out / "run.json", out / "results.jsonl"
    mine = asdict(settings)
    if meta.exists():
        theirs = {**_DEFAULTS, **json.loads(meta.read_text())}  # settings added since keep their defaults
        if theirs != mine:
            diff = []
            for k, v in mine.items():
                if isinstance(v, dict) and isinstance(theirs.get(k), dict):
                    diff += [
                        f"{k}.{x}: {theirs[k].get(x)!r} there, {y!r} now" for x, y in v.items() if theirs[k].get(x) != y
                    ]
                elif theirs.get(k) != v:
                    diff.append(f"{k}: {theirs.get(k)!r} there, {v!r} now")
            raise MementoError(
                f"{out} holds a run with other settings ({', '.join(diff)}); evaluate into another "
                "folder (`memento eval`: another --out, or another NAME in --run NAME=...)"
            )
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


def per_problem(records: list[dict]) -> dict[str, list[dict]]:
    """The records grouped by problem, in the order problems first appear."""
    by: dict[str, list[dict]] = {}
    for r in records:
        by.setdefault(r["problem"], []).append(r)
    return by


def score(samples: list[dict]) -> float:
    """A problem's pass@1: the share of its samples that are right."""
    return sum(r["outcome"] == "correct" for r in samples) / len(samples)


def paired(a: list[dict], b: list[dict]) -> Difference | None:
    """Run a minus run b in pass@1, paired over the problems both scored (None: no problem in common)."""
    sa, sb = ({p: score(rs) for p, rs in per_problem(records).items()} for records in (a, b))
    common = [p for p in sa if p in sb]
    return paired_scores([sa[p] for p in common], [sb[p] for p in common]) if common else None


def summarize(records: list[dict], settings: EvalSettings, about: str = "", votes: bool = True) -> dict:
    by = per_problem(records)
    k = settings.samples
    pass1 = [score(rs) for rs in by.values()]
    passk = [any(r["outcome"] == "correct" for r in rs) for rs in by.values()]
    majk = [_majority(rs) for rs in by.values()]
    binary = all(s in (0, 1) for s in pass1)
    n, total = len(by), max(len(records), 1)

    def mean(key):
        return sum(r[key] for r in records) / total

    return {
        "task": settings.task,
        "about": about,
        "model": settings.model,
        "policy": settings.policy,
        "engine": settings.engine,
        "problems": n,
        "samples": k,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "top_k": settings.top_k,
        "max_new_tokens": settings.max_new_tokens,
        "pass@1": sum(pass1) / max(n, 1),
        f"pass@{k}": sum(passk) / max(n, 1),
        f"maj@{k}": sum(majk) / max(n, 1) if votes else None,
        "pass@1_ci95": list(wilson(round(sum(pass1)), n) if binary else mean_interval(pass1)),
        "pass@1_se": standard_error(pass1),  # the paper's: over per-problem means
        "maj@k_curve": majority_curve(list(by.values())) if votes and k > 1 else None,
        "protocol": settings.protocol,
        "deviations": settings.deviations(),
        "checkers_disagree": sum(
            r.get("math_verify") is not None and r["math_verify"] != (r["outcome"] == "correct") for r in records
        ),
        "no_answer": sum(r["outcome"] == "no_answer" for r in records) / total,
        "truncated": sum(r["finish_reason"] == "length" for r in records) / total,
        "context": model_context(settings.model),  # the model's longest sequence: prompt and completion together
        "context_cut": sum(  # the share of samples the context stopped before max_new_tokens
            r["finish_reason"] == "length" and r["tokens"] < settings.max_new_tokens for r in records
        )
        / total,
        "tokens": mean("tokens"),
        "blocks": mean("blocks"),
        "peak_kv_tokens": mean("peak_kv_tokens"),
        "auc_kv_ktok": mean("auc_kv_ktok"),
        "evicted_tokens": mean("evicted_tokens"),
        "peak_kv_gb": mean("peak_kv_bytes") / 1e9 if all("peak_kv_bytes" in r for r in records) else None,
        "block_tokens": _mean([t for r in records for t in r.get("block_tokens", [])]),
        "memento_tokens": _mean([t for r in records for t in r.get("memento_tokens", [])]),
    }


def majority_curve(problems: list[list[dict]]) -> list[float]:
    """maj@k for k = 1..n (n: the fewest samples of any problem): for each k, the majority vote (as `_majority`) of
    every window of k consecutive samples, taken cyclically so that every sample starts one, averaged over windows
    and problems. maj@1 is exactly pass@1; ties go to the answer seen first, which the rotation averages out."""
    n = min(len(rs) for rs in problems)
    sums = [0.0] * n
    for rs in problems:
        keys = [_vote(r) for r in rs[:n]]
        for j in range(n):  # the window starting at sample j, grown one sample at a time
            counts: dict = {}
            first: dict = {}
            best = None
            for k in range(n):
                key = keys[(j + k) % n]
                if key is not None:
                    counts[key] = counts.get(key, 0) + 1
                    first.setdefault(key, k)
                    if best is None or (counts[key], -first[key]) > (counts[best], -first[best]):
                        best = key
                sums[k] += best is True
    return [total / (n * len(problems)) for total in sums]


def _vote(r: dict):
    """What a sample votes for: True for any right answer, a wrong one by its text without spaces, None: none."""
    if r["answer"] is None:
        return None
    return True if r["outcome"] == "correct" else r["answer"].replace(" ", "")


def _mean(values: list) -> float | None:
    return sum(values) / len(values) if values else None


def _majority(samples: list[dict]) -> bool:
    """Whether the most frequent answer is right: right answers are one answer (they all equal the reference),
    wrong ones are grouped by their text without spaces; ties go to the answer seen first."""
    votes = Counter(v for v in map(_vote, samples) if v is not None)
    return bool(votes) and votes.most_common(1)[0][0] is True
