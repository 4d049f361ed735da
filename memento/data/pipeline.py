"""The data pipeline: raw traces -> atomize -> score boundaries -> segment -> compress -> judge and refine.

Design choices:
- Resumable by construction. Each finished trace (or its failure) is appended to `DIR/journal.jsonl` with a
  single O_APPEND write and an fsync; a run that is killed leaves at most a torn last line, which the next run
  drops. Re-running skips every journaled trace. Final files are rebuilt from the journal in input order, so a
  resumed run's output is byte-identical to an uninterrupted one, whatever the number of workers.
- The resolved configuration is saved as `DIR/config.json` once the input and the stages are ready; resuming with
  different settings is refused, but only once a trace is journaled (a run that produced nothing locks nothing).
- `shard=(i, N)` keeps the traces whose input position is i mod N, so N machines can split one input.
- Segmentation as in the paper: (sum of cut scores) / blocks - 0.5 x CV of block lengths, blocks of >= 200 tokens
  and no maximum (`memento.data.segment`); `max_block_tokens` is an opt-in cap.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from memento.core.errors import MementoError
from memento.core.format import Block, Trace
from memento.core.rows import row_from_trace, trace_from_row, write_rows
from memento.data.atomize import atomize
from memento.data.boundaries import LLMScorer, heuristic_scores
from memento.data.compress import ExtractiveCompressor, LLMCompressor
from memento.data.judge import PASS, LLMJudge, RuleJudge
from memento.data.llm import CachedBackend, HFBackend, LLMUnavailable, OpenAIBackend, Usage, current_usage, fan_out
from memento.data.report import write_report
from memento.data.segment import segment
from memento.data.sources import RawTrace, iter_raw, seed_filter

log = logging.getLogger(__name__)
JOURNAL = "journal.jsonl"


BACKENDS = ("offline", "openai", "hf")
RUN_ONLY = ("workers", "timeout", "concurrency", "price_in", "price_out")  # settings that do not change the output


@dataclass(slots=True)
class Config:
    backend: str = "offline"
    base_url: str | None = None  # openai: the endpoint, e.g. http://127.0.0.1:8000/v1
    model: str | None = None  # openai: the model name sent with each request
    temperature: float | None = None  # openai: sent only when set (reasoning models refuse it)
    reasoning_effort: str | None = None  # openai: low | medium | high, sent only when set
    max_completion_tokens: int | None = 16_000  # openai: per call, reasoning included (the release's)
    two_pass: bool = False  # LLM boundary scoring twice (windows 16 and 11), averaged
    timeout: float = 120.0
    concurrency: int = 16  # simultaneous requests at most
    price_in: float = 0.0  # per million prompt tokens, for the cost in stats
    price_out: float = 0.0
    tokenizer: str = "cl100k"  # block sizes counted as the release does; qwen, smollm2 or a model folder also work
    min_block_tokens: int = 200
    max_block_tokens: int | None = None  # opt-in; the paper has none
    max_trace_tokens: int | None = 20_000  # seed filter: longer reasoning is dropped (None: keep all)
    hf_max_new_tokens: int = 512  # hf: cap on every reply
    lam: float = 0.5
    rounds: int = 2  # judge -> revise rounds
    workers: int = 1
    shard: tuple[int, int] = (0, 1)
    limit: int | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise MementoError(f"backend '{self.backend}' is not available: use one of {', '.join(BACKENDS)}")
        if self.backend == "openai" and not (self.base_url and self.model):
            raise MementoError("the openai backend needs --base-url and --model")
        if self.backend == "hf" and not self.model:
            raise MementoError("the hf backend needs --model (a model folder, or smollm2)")
        i, n = self.shard
        if not (n >= 1 and 0 <= i < n):
            raise MementoError(f"shard must be i/N with 0 <= i < N, got {i}/{n}")
        if self.min_block_tokens < 1 or (
            self.max_block_tokens is not None and self.max_block_tokens < self.min_block_tokens
        ):
            raise MementoError("block sizes must satisfy 1 <= min_block_tokens <= max_block_tokens")
        if self.rounds < 0 or self.workers < 1:
            raise MementoError("rounds must be >= 0 and workers >= 1")

    def identity(self) -> dict:
        """The settings that determine the output (workers and the progress of a run do not)."""
        out = asdict(self)
        for key in RUN_ONLY:
            out.pop(key)
        out["shard"] = list(self.shard)
        return out


class Stages:
    """The stage implementations of one backend, sharing one tokenizer."""

    def __init__(self, config: Config, out: Path):
        from memento.tokenizer import token_counter

        self.config = config
        self.count, self.counted_with = token_counter(config.tokenizer)
        self.parallel = config.backend == "openai"  # a trace's independent calls go out together to a server
        self.fallback = ExtractiveCompressor(self.count)
        if config.backend == "offline":
            self.scorer = None
            self.compressor, self.judge = ExtractiveCompressor(self.count), RuleJudge()
        else:
            if config.backend == "hf":
                backend = HFBackend(config.model, config.hf_max_new_tokens)
            else:
                backend = OpenAIBackend(
                    config.base_url,
                    config.model,
                    timeout=config.timeout,
                    concurrency=config.concurrency,
                    price_in=config.price_in,
                    price_out=config.price_out,
                    temperature=config.temperature,
                    reasoning_effort=config.reasoning_effort,
                    max_completion_tokens=config.max_completion_tokens,
                )
            backend = CachedBackend(backend, out / "llm_cache.sqlite")
            self.scorer = LLMScorer(backend, two_pass=config.two_pass, parallel=self.parallel)
            self.compressor, self.judge = LLMCompressor(backend), LLMJudge(backend)

    def run(self, raw: RawTrace) -> tuple[Trace, dict]:
        cfg = self.config
        if not raw.reasoning.strip():
            raise MementoError("the trace has no reasoning to segment (empty <think>)")
        atoms = atomize(raw.reasoning, self.count)
        units = atoms.units
        lengths = self.count(units)
        scores = heuristic_scores(units) if self.scorer is None else self.scorer.score(raw.problem, units)
        seg = segment(lengths, scores, cfg.lam, cfg.min_block_tokens, cfg.max_block_tokens)
        blocks = ["".join(units[a:b]).strip() for a, b in seg.blocks]
        stats = {"units_raw": atoms.raw_units, "units": len(units), "failures": {}}
        mementos = self.compressor.compress(raw.problem, blocks)
        missing = [i for i, memento in enumerate(mementos) if not memento]  # redone per block, all at once
        redone = fan_out(lambda i: self.compressor.revise(raw.problem, blocks, i, "", "", []), missing, self.parallel)
        failures = stats["failures"]
        for i, memento in zip(missing, redone, strict=True):
            failures["memento_redone"] = failures.get("memento_redone", 0) + 1
            mementos[i] = memento
            if not memento:  # the extractive memento stands in
                failures["memento_extractive_fallback"] = failures.get("memento_extractive_fallback", 0) + 1
                mementos[i] = self.fallback.compress(raw.problem, [blocks[i]])[0] or blocks[i][:200]
        verdicts = fan_out(
            lambda i: self.judge.judge(raw.problem, blocks[i], mementos[i]), range(len(blocks)), self.parallel
        )
        rounds = [[v.score for v in verdicts]]
        judged = [[_judged(m, v)] for m, v in zip(mementos, verdicts, strict=True)]  # every verdict, per block
        for _ in range(cfg.rounds):
            failing = [i for i, v in enumerate(verdicts) if v.score < PASS]
            if not failing:
                break

            def revise(i):  # one failing block: rewrite its memento, judge the rewrite
                v = verdicts[i]
                revised = self.compressor.revise(raw.problem, blocks, i, mementos[i], v.feedback, v.must_include)
                return revised, self.judge.judge(raw.problem, blocks[i], revised) if revised else None

            for i, (revised, verdict) in zip(failing, fan_out(revise, failing, self.parallel), strict=True):
                if revised:
                    judged[i].append(_judged(revised, verdict))
                    if verdict.score >= verdicts[i].score:
                        mementos[i], verdicts[i] = revised, verdict
            rounds.append([v.score for v in verdicts])
        block_tokens = [int(sum(lengths[a:b])) for a, b in seg.blocks]
        memento_tokens = self.count(mementos)
        metadata = {**raw.metadata, "id": raw.id, "boundary_scores": [float(s) for s in scores], "judge_rounds": judged}
        trace = Trace(
            raw.problem,
            [Block(b, m) for b, m in zip(blocks, mementos, strict=True)],
            raw.answer,
            metadata,
            sentences=units,
            block_ranges=[(a, b - 1) for a, b in seg.blocks],
        )
        stats |= {
            "blocks": len(blocks),
            "block_tokens": block_tokens,
            "memento_tokens": memento_tokens,
            "objective": seg.objective,
            "judge_rounds": rounds,
        }
        return trace, stats


def _judged(memento: str, verdict) -> dict:
    """One verdict as kept in `full` rows: the memento judged, its score, its points per rubric dimension and the
    judge's feedback."""
    parts = {k: float(v) for k, v in verdict.parts.items()}
    return {"memento": memento, "score": float(verdict.score), "parts": parts, "feedback": verdict.feedback}


class Dropped(Exception):
    """A trace the seed filters leave out (journaled with the reason, counted in stats.json)."""


def build(
    input_spec: str, out_dir: str | Path, config: Config, progress: Callable[[int, int], None] | None = None
) -> dict:
    """Build (or resume) Memento data from `input_spec` into `out_dir`; returns the aggregate stats."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    journal = out / JOURNAL
    done = {rec["index"] for rec in _read_journal(journal)}
    identity = _check_config(out, config, input_spec, locked=bool(done))
    i, n = config.shard
    todo = [(k, raw) for k, raw in enumerate(iter_raw(input_spec)) if k % n == i]
    if config.limit is not None:
        todo = todo[: config.limit]
    pending = [(k, raw) for k, raw in todo if k not in done]
    log.info("%d traces, %d already done, %d to go", len(todo), len(todo) - len(pending), len(pending))
    stages = Stages(config, out)
    (out / "config.json").write_text(identity)  # input read and stages ready: from here on the folder is this build's
    lock = threading.Lock()
    finished = len(todo) - len(pending)
    if progress:
        progress(finished, len(todo))
    unfinished: list[str] = []
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def work(item: tuple[int, RawTrace]) -> None:
        nonlocal finished
        k, raw = item
        usage = Usage()
        token = current_usage.set(usage)
        try:
            dropped = seed_filter(raw, stages.count, config.max_trace_tokens)
            if dropped:
                raise Dropped(dropped)
            trace, stats = stages.run(raw)
            record = {
                "index": k,
                "id": raw.id,
                "row": row_from_trace(trace, "full"),
                "stats": stats | {"llm": usage.as_dict()},
            }
        except LLMUnavailable as e:  # transient: not journaled, so a re-run tries this trace again
            log.warning("trace %s not finished: %s", raw.id, e)
            with lock:
                unfinished.append(raw.id)
            return
        except Dropped as e:
            record = {"index": k, "id": raw.id, "dropped": str(e)}
        except MementoError as e:
            log.warning("trace %s failed: %s", raw.id, e)
            record = {"index": k, "id": raw.id, "error": {"kind": type(e).__name__, "message": str(e)}}
        finally:
            current_usage.reset(token)
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        with lock:
            os.write(fd, line)
            os.fsync(fd)
            finished += 1
            if progress:
                progress(finished, len(todo))

    try:
        if config.workers == 1:
            for item in pending:
                work(item)
        else:
            with ThreadPoolExecutor(config.workers) as pool:
                list(pool.map(work, pending))
    finally:
        os.close(fd)
    records = sorted(_read_journal(journal), key=lambda r: r["index"])
    stats = _finalize(out, records, config, stages.counted_with)
    if unfinished:
        log.warning("%d traces not finished (the LLM endpoint failed); re-run to retry them", len(unfinished))
    # What this run found done (said on the console; not in stats.json, which a resumed run must write identically).
    return stats | {"unfinished": len(unfinished), "resumed": len(todo) - len(pending), "todo": len(todo)}


def _check_config(out: Path, config: Config, input_spec: str, locked: bool) -> str:
    """The text of `config.json` for this build; refused when the folder holds journaled traces of other settings
    (`locked`)."""
    path = out / "config.json"
    identity = {"input": input_spec, **config.identity()}
    if locked and path.exists():
        saved = json.loads(path.read_text())
        if saved != identity:
            diff = sorted(k for k in identity.keys() | saved.keys() if identity.get(k) != saved.get(k))
            raise MementoError(f"{out} was built with other settings ({', '.join(diff)}): use a new --out folder")
    return json.dumps(identity, indent=1) + "\n"


def _read_journal(path: Path) -> list[dict]:
    """Journal records; a torn last line (a killed run) is cut off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    records, good = [], 0
    for line in data.splitlines(keepends=True):
        try:
            if not line.endswith(b"\n"):
                raise ValueError("torn line")
            records.append(json.loads(line))
        except ValueError:
            log.warning("%s: dropping a torn last record (an interrupted run)", path)
            with path.open("r+b") as f:
                f.truncate(good)
            break
        good += len(line)
    return records


def _finalize(out: Path, records: list[dict], config: Config, counted_with: str) -> dict:
    ok = [r for r in records if "row" in r]
    traces = [trace_from_row(r["row"], f"{out / JOURNAL}: trace {r['id']}") for r in ok]
    for name, cfg in (("openmementos", "default"), ("openmementos-full", "full")):
        write_rows(traces, out / f"{name}.jsonl", cfg)
        write_rows(traces, out / f"{name}.parquet", cfg)
    return write_report(out, records, config, counted_with)
