"""Read and write Memento traces as OpenMementos rows (configs `default` and `full`) and as `segments` JSON.

- `default` row: problem, response (Memento format), domain, source, difficulty.
- `full` row: + sentences, blocks ([start, end] inclusive sentence-index ranges, one per block), block_summaries.
- `segments` JSON (the paper's example files): problem, segments = ordered {type: block|summary|answer, block_idx,
  text, char_len, approx_tokens}; summary i is the memento of block i; other top-level keys are kept as metadata.

Files: `.jsonl` (one object per line), `.json` (one object or a list), `.parquet`. Each object may be a row or a
segments object. Every error names the file, the line or item, and the field.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from memento.core.errors import MementoError, TraceFormatError
from memento.core.format import Block, Dropped, Trace, parse, recover, render

FORMATS = (".jsonl", ".json", ".parquet")
DEFAULT_FIELDS = ("problem", "response", "domain", "source", "difficulty")
FULL_FIELDS = ("sentences", "blocks", "block_summaries")
FULL_EXTRAS = ("boundary_scores", "judge_rounds")  # from `memento data build`: in `full` rows only, when known


OnDrop = Callable[[str, list[Dropped]], None]  # (where, what lenient parsing left out of that row)


def read_traces(path: str | Path, lenient: bool = False, on_drop: OnDrop | None = None) -> list[Trace]:
    return list(iter_traces(path, lenient, on_drop))


def iter_traces(path: str | Path, lenient: bool = False, on_drop: OnDrop | None = None) -> Iterator[Trace]:
    """Traces of a rows / segments file; `lenient` recovers what it can from malformed responses and tells
    `on_drop` what it left out."""
    path = Path(path)
    for where, obj in read_objects(path):
        if not isinstance(obj, dict):
            raise MementoError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        if "segments" in obj:
            yield trace_from_segments(obj, where)
        else:
            yield trace_from_row(obj, where, lenient, on_drop)


def read_objects(path: Path) -> Iterator[tuple[str, object]]:
    """(where, object) for each JSON object of a .jsonl / .json / .parquet file; `where` names file and line."""
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            for i, row in enumerate(pq.read_table(path).to_pylist()):
                yield f"{path}: row {i + 1}", row
            return
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise MementoError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise MementoError(f"{path}: not UTF-8 text") from None
    except Exception as e:  # pyarrow's errors for a file that is not Parquet
        raise MementoError(f"{path}: cannot read as Parquet: {e}") from None
    if path.suffix == ".jsonl":
        for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 may sit inside a string
            if line.strip():
                yield f"{path}:{n}", _loads(line, f"{path}:{n}")
        return
    if path.suffix not in FORMATS:
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise MementoError(
                f"{path}: unsupported format '{path.suffix or '(no suffix)'}': give a .jsonl, .json or .parquet "
                "file of JSON objects, one per trace (raw text is not read)"
            ) from None
    else:
        data = _loads(text, str(path))
    if isinstance(data, list):
        for i, obj in enumerate(data):
            yield f"{path}: item {i}", obj
    else:
        yield str(path), data


def _loads(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise MementoError(f"{where}: invalid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None


def _field(obj: dict, name: str, where: str, kind: type = str):
    if name not in obj:
        raise MementoError(f"{where}: missing field '{name}'")
    value = obj[name]
    if not isinstance(value, kind):
        raise MementoError(f"{where}: field '{name}' must be {kind.__name__}, got {type(value).__name__}")
    return value


def trace_from_row(row: dict, where: str = "row", lenient: bool = False, on_drop: OnDrop | None = None) -> Trace:
    problem = _field(row, "problem", where)
    response = _field(row, "response", where)
    metadata = {k: v for k, v in row.items() if k not in ("problem", "response", *FULL_FIELDS)}
    try:
        if lenient:
            trace, dropped = recover(response, problem, metadata)
            if dropped and on_drop:
                on_drop(where, dropped)
        else:
            trace = parse(response, problem, metadata)
    except TraceFormatError as e:
        raise MementoError(f"{where}: field 'response': {e}") from None
    if all(k in row for k in FULL_FIELDS):
        _attach_sentences(trace, row, where)
    return trace


def _attach_sentences(trace: Trace, row: dict, where: str) -> None:
    sentences = _field(row, "sentences", where, list)
    ranges = [tuple(r) for r in _field(row, "blocks", where, list)]
    summaries = _field(row, "block_summaries", where, list)
    n = len(trace.blocks)
    if len(ranges) != n or len(summaries) != n:
        raise MementoError(
            f"{where}: the response has {n} blocks but 'blocks' has {len(ranges)} ranges "
            f"and 'block_summaries' {len(summaries)} entries"
        )
    for i, (summary, block) in enumerate(zip(summaries, trace.blocks, strict=True)):
        if summary != block.memento:
            raise MementoError(f"{where}: field 'block_summaries'[{i}] differs from memento {i + 1} of the response")
    # Accept end-exclusive ranges too (each range ending where the next starts); store them inclusive.
    exclusive = bool(ranges) and (
        all(a[1] == b[0] for a, b in itertools.pairwise(ranges)) and ranges[-1][1] == len(sentences)
    )
    trace.sentences = [str(s) for s in sentences]
    trace.block_ranges = [(int(s), int(e) - 1) if exclusive else (int(s), int(e)) for s, e in ranges]
    for i, (s, e) in enumerate(trace.block_ranges):
        if not 0 <= s <= e < len(sentences):
            n = len(sentences)
            raise MementoError(f"{where}: field 'blocks'[{i}] = {list(ranges[i])} is outside the {n} sentences")


def row_from_trace(trace: Trace, config: str = "default") -> dict:
    """An OpenMementos row; metadata keys beyond the config's columns are kept as extra columns."""
    if config not in ("default", "full"):
        raise MementoError(f"unknown OpenMementos config '{config}': use default or full")
    row = {"problem": trace.problem, "response": render(trace)}
    row |= {k: trace.metadata.get(k) for k in DEFAULT_FIELDS[2:]}
    row |= {k: v for k, v in trace.metadata.items() if k not in row and k not in FULL_EXTRAS}
    if config == "full":
        if trace.sentences is None:  # no sentence split known: one sentence per block
            sentences, ranges = [b.text for b in trace.blocks], [(i, i) for i in range(len(trace.blocks))]
        else:
            sentences, ranges = trace.sentences, trace.block_ranges or []
        row |= {
            "sentences": list(sentences),
            "blocks": [list(r) for r in ranges],
            "block_summaries": [b.memento for b in trace.blocks],
        }
        row |= {k: trace.metadata[k] for k in FULL_EXTRAS if k in trace.metadata}
    return row


def write_rows(traces: Iterable[Trace], path: str | Path, config: str = "default") -> Path:
    """Write rows as `.jsonl` or `.parquet` (by suffix)."""
    path = Path(path)
    rows = [row_from_trace(t, config) for t in traces]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(_uniform(rows)), path)
    else:
        with path.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _uniform(rows: list[dict]) -> list[dict]:
    """Rows Arrow can store: every key in every row (None where absent) and, for a column whose values mix
    types, the values as text (JSON keeps them as they were)."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    mixed = set()
    for key in keys:
        kinds = {type(row[key]) for row in rows if row.get(key) is not None}
        if len(kinds - {int, float}) > 1 or (len(kinds) > 1 and not kinds <= {int, float}):
            mixed.add(key)
    return [
        {
            k: (
                json.dumps(row.get(k), ensure_ascii=False)
                if k in mixed and not isinstance(row.get(k), str | None)
                else row.get(k)
            )
            for k in keys
        }
        for row in rows
    ]


def trace_from_segments(obj: dict, where: str = "segments") -> Trace:
    problem = _field(obj, "problem", where)
    segments = _field(obj, "segments", where, list)
    blocks: list[Block] = []
    pending: tuple[int, str] | None = None  # (block_idx, text) of a block awaiting its summary
    answer = None
    for i, seg in enumerate(segments):
        at = f"{where}: segments[{i}]"
        if not isinstance(seg, dict):
            raise MementoError(f"{at}: expected an object")
        kind, text = _field(seg, "type", at), _field(seg, "text", at)
        idx = seg.get("block_idx")
        if kind == "block":
            if pending is not None:
                raise MementoError(f"{at}: block {idx} starts before block {pending[0]} got its summary")
            pending = (idx, text)
        elif kind == "summary":
            if pending is None or pending[0] != idx:
                raise MementoError(f"{at}: summary of block {idx} has no matching block before it")
            blocks.append(Block(pending[1], text))
            pending = None
        elif kind == "answer":
            answer = text
        else:
            raise MementoError(f"{at}: unknown segment type '{kind}' (expected block, summary or answer)")
    if pending is not None:
        raise MementoError(f"{where}: block {pending[0]} has no summary")
    metadata = {k: v for k, v in obj.items() if k not in ("problem", "segments")}
    return Trace(problem=problem, blocks=blocks, answer=answer or "", metadata=metadata)


def segments_from_trace(trace: Trace) -> dict:
    def seg(kind: str, idx: int, text: str) -> dict:
        return {"type": kind, "block_idx": idx, "text": text, "char_len": len(text), "approx_tokens": len(text) // 4}

    segments = []
    for i, block in enumerate(trace.blocks, 1):
        segments += [seg("block", i, block.text), seg("summary", i, block.memento)]
    segments.append(seg("answer", 0, trace.answer))
    return {"problem": trace.problem, **trace.metadata, "segments": segments}
