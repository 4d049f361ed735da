"""Trace files -> view items: per trace, one small list entry (the list, its search and filters) and one body (the
trace view).

Reads every kind of trace file the project reads or writes, through the project's readers (`memento.core.rows`,
`memento.core.format.recover`):
- OpenMementos rows, `default` and `full` (`sentences`, `blocks`, `block_summaries`; from `memento data build` also
  `boundary_scores` and `judge_rounds`), and the journal records of `memento data build` (`row` + `stats`);
- the paper's `segments` JSON;
- `memento generate --json` output (`prompt`, `text`, `trace`, `stats`);
- `memento eval` records (`results.jsonl`: `problem`, `sample`, `outcome`, `text`, ...).

Design choices:
- Token counts: a tokenizer's when one is given (`count`); else the counts the file carries (eval records: the
  engine's; segments: the paper's `approx_tokens`; journal records: the build's counter); else characters / 4, the
  rule of the paper's `approx_tokens`. Each trace says which in `unit`. (`generate` stats count the prompt with its
  chat template: they are shown as metadata, not mixed in.)
- Responses are read leniently: a malformed trace still shows, and its body lists what was dropped (`notes`). A
  file that holds no traces raises `MementoError` naming the file, the line and the field.
- A block of a `full` row keeps its sentences when they join back to its text, so the view can mark each candidate
  boundary with its score; its text is then not stored twice.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from memento.core.errors import MementoError
from memento.core.format import Block, Dropped, Trace, recover
from memento.core.rows import read_objects, trace_from_row, trace_from_segments

CHARS_PER_TOKEN = 4
APPROX = "≈ tokens (characters / 4)"
JUDGE_PASS = 8.0  # memento.data.judge.PASS (the paper's pass mark); the view sits below `data` (tests check both agree)
EOS = "<|im_end|>"  # the end of turn the engines leave on a completion's text
SHOWN_META = 200  # characters of a metadata value the view shows
TITLE = 160  # characters of the problem that title a trace (and that the list's search reads)

Count = Callable[[list[str]], list[int]]


class Item(NamedTuple):
    """`entry`: id, title, blocks, ratio; domain, judge (pass | fail), outcome, find (more search text) when known.
    `body`: problem, pt and at (prompt and answer tokens, in the unit `ends`), unit (of the blocks' and mementos'
    counts), answer, meta, notes, blocks: text (or sentences and their boundary scores), memento, bt and mt (block
    and memento tokens), cut (the score of the cut after the block), judge (its verdicts).
    """

    entry: dict
    body: dict


def read(path: str | Path, count: Count | None = None, counted_with: str = "") -> list[Item]:
    """The items of a trace file (.jsonl, .json or .parquet); `count` overrides every other token count."""
    path = Path(path)
    items = [i for where, obj in read_objects(path) if (i := item(obj, where, count, counted_with)) is not None]
    if not items:
        raise MementoError(f"{path}: no traces found")
    for n, it in enumerate(items, 1):  # a trace without an id of its own: the file's name, and its place in the file
        it.entry["id"] = it.entry["id"] or (f"{path.stem}:{n}" if len(items) > 1 else path.stem)
    return unique(items)


def unique(items: list[Item]) -> list[Item]:
    """Give repeated ids a suffix (`~2`, `~3`): the page's `#trace=ID` links need one trace per id."""
    seen: dict[str, int] = {}
    for it in items:
        base = it.entry["id"]
        seen[base] = seen.get(base, 0) + 1
        if seen[base] > 1:
            it.entry["id"] = f"{base}~{seen[base]}"
    return items


def item(obj: object, where: str, count: Count | None = None, counted_with: str = "") -> Item | None:
    """One object of a trace file as an item (None: a journal record of a trace the build left out)."""
    if not isinstance(obj, dict):
        raise MementoError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "segments" in obj:
        return _segments(obj, where, count, counted_with)
    if "trace" in obj and "text" in obj:
        return _generation(obj, where, count, counted_with)
    if "outcome" in obj and "text" in obj:
        return _sample(obj, where, count, counted_with)
    if "response" in obj:
        return _row(obj, where, count, counted_with)
    if "row" in obj:  # `memento data build`'s journal.jsonl
        if not isinstance(obj["row"], dict):
            raise MementoError(f"{where}: field 'row' must be an object")
        stats = obj.get("stats") or {}
        counts = (stats.get("block_tokens"), stats.get("memento_tokens"))
        unit = f"tokens ({counted_with})" if counted_with else "tokens (the build's)"
        return _row(obj["row"], f"{where}: field 'row'", count, counted_with, counts, unit)
    if "index" in obj and ("error" in obj or "dropped" in obj):
        return None
    raise MementoError(
        f"{where}: not a trace: expected an OpenMementos row (problem, response), a segments object (problem, "
        "segments), `memento generate --json` output (prompt, text, trace) or a `memento eval` record (problem, "
        "sample, outcome, text)"
    )


def _row(row, where, count, counted_with, counts=(None, None), unit="") -> Item:
    dropped: list[Dropped] = []
    trace = trace_from_row(row, where, lenient=True, on_drop=lambda _, ds: dropped.extend(ds))
    meta = {k: v for k, v in trace.metadata.items() if k not in ("id", "boundary_scores", "judge_rounds")}
    body = _body(trace, _counts(trace, count, counted_with, counts, unit), meta, _notes(dropped))
    _full_extras(trace, body, where)
    key = trace.metadata.get("id") or trace.metadata.get("task_id")
    return Item(_entry(key, trace, body, domain=trace.metadata.get("domain")), body)


TYPES = ("block", "summary")


def _segments(obj, where, count, counted_with) -> Item:
    trace = trace_from_segments(obj, where)
    sizes = {kind: [s.get("approx_tokens") for s in obj["segments"] if s.get("type") == kind] for kind in TYPES}
    counts = (sizes["block"], sizes["summary"])  # checked against the blocks by `_counts`
    body = _body(trace, _counts(trace, count, counted_with, counts, "≈ tokens (the file's approx_tokens)"), obj, [])
    return Item(_entry(obj.get("id"), trace, body, find=obj.get("problem_source")), body)


def _completion(text: str, problem: str) -> tuple[Trace, list[str]]:
    """A generated completion as a trace, leniently (a cut-off block is dropped and said); text that holds no
    Memento structure at all is shown whole as the answer."""
    trace, dropped = recover(text.removesuffix(EOS), problem)
    if not trace.blocks and not trace.answer:
        trace.answer, dropped = text, []
    return trace, _notes(dropped)


def _generation(obj, where, count, counted_with) -> Item:
    """`memento generate --json`: prompt, text, trace (read again from the text, with what it dropped), stats."""
    prompt, text = _text(obj, "prompt", where), _text(obj, "text", where)
    trace, notes = _completion(text, prompt)
    stats = obj.get("stats") if isinstance(obj.get("stats"), dict) else {}
    meta = {"policy": obj.get("policy"), "finish_reason": obj.get("finish_reason")}
    meta |= {k: v for k, v in stats.items() if not isinstance(v, list | dict)}
    body = _body(trace, _counts(trace, count, counted_with), meta, notes)
    return Item(_entry("generate", trace, body), body)


def _sample(obj, where, count, counted_with) -> Item:
    """A `memento eval` record: the problem's id (not its text), the completion, its outcome and the engine's block
    and memento token counts."""
    text = _text(obj, "text", where)
    problem = str(obj.get("problem", ""))
    trace, notes = _completion(text, "")
    counts = (obj.get("block_tokens"), obj.get("memento_tokens"))
    meta = {k: v for k, v in obj.items() if k not in ("text", "block_tokens", "memento_tokens")}
    body = _body(trace, _counts(trace, count, counted_with, counts, "tokens (the engine's)"), meta, notes)
    body["problem"] = None  # results.jsonl keeps the problem's id only
    key = f"{problem}#{obj.get('sample', 0)}"
    title = f"{problem} · sample {obj.get('sample', 0)}"
    outcome = obj.get("outcome")
    find = " ".join(str(obj.get(k) or "") for k in ("answer", "reference", "run", "task"))
    return Item(_entry(key, trace, body, title=title, outcome=outcome, find=find, domain=obj.get("task")), body)


def _text(obj: dict, name: str, where: str) -> str:
    if not isinstance(obj.get(name), str):
        raise MementoError(f"{where}: field '{name}' must be a string, got {type(obj.get(name)).__name__}")
    return obj[name]


def _notes(dropped: list[Dropped]) -> list[str]:
    return [f"dropped {d.reason} (at character {d.offset})" for d in dropped]


def _counts(trace: Trace, count: Count | None, counted_with: str, given=(None, None), unit: str = "") -> dict:
    """Token counts of the prompt, each block and memento, and the answer: `count`'s, else the file's (`given`:
    block and memento lists that match the blocks), else characters / 4."""
    texts = [trace.problem, *(b.text for b in trace.blocks), *(b.memento for b in trace.blocks), trace.answer]
    n = len(trace.blocks)
    ends = APPROX  # the prompt's and the answer's counts: files carry them for blocks and mementos only
    if count is not None:
        sizes, unit = count(texts), f"tokens ({counted_with})" if counted_with else "tokens"
        ends = unit
    else:
        sizes = [len(t) // CHARS_PER_TOKEN for t in texts]
        bt, mt = given
        if _ints(bt, n) and _ints(mt, n):
            sizes[1 : 1 + 2 * n] = [*bt, *mt]
        else:
            unit = APPROX
    blocks, mementos = sizes[1 : 1 + n], sizes[1 + n : 1 + 2 * n]
    return {"pt": sizes[0], "bt": blocks, "mt": mementos, "at": sizes[-1], "unit": unit, "ends": ends}


def _ints(values, n: int) -> bool:
    return isinstance(values, list) and len(values) == n and all(isinstance(v, int) for v in values)


def _body(trace: Trace, counts: dict, meta: dict, notes: list[str]) -> dict:
    blocks = [
        {"text": b.text, "memento": b.memento, "bt": bt, "mt": mt}
        for b, bt, mt in zip(trace.blocks, counts["bt"], counts["mt"], strict=True)
    ]
    shown = {k: _brief(v) for k, v in meta.items() if k not in ("problem", "segments") and _scalar(v)}
    body = {"problem": trace.problem, "pt": counts["pt"], "unit": counts["unit"], "ends": counts["ends"]}
    body["blocks"] = blocks
    body |= {"answer": trace.answer, "at": counts["at"], "meta": shown}
    if notes:
        body["notes"] = notes
    return body


def _scalar(value) -> bool:
    return isinstance(value, str | int | float | bool) and value != ""


def _brief(value, size: int = SHOWN_META):
    return value[:size] + "…" if isinstance(value, str) and len(value) > size else value


def _full_extras(trace: Trace, body: dict, where: str) -> None:
    """Sentences with their boundary scores, the score of each cut and the judge's verdicts, when the row has them."""
    blocks = body["blocks"]
    scores = trace.metadata.get("boundary_scores")
    if scores is not None:
        n = len(trace.sentences or [])
        if not isinstance(scores, list) or not all(isinstance(s, int | float) for s in scores):
            raise MementoError(f"{where}: field 'boundary_scores' must be a list of numbers")
        if trace.sentences is None or len(scores) != n - 1:
            raise MementoError(
                f"{where}: field 'boundary_scores' has {len(scores)} scores; expected one per pair of the {n} "
                "sentences (a `full` row)"
            )
    if trace.sentences is not None and trace.block_ranges is not None:
        for i, (start, end) in enumerate(trace.block_ranges):
            sentences = list(trace.sentences[start : end + 1])
            sentences[0], sentences[-1] = sentences[0].lstrip(), sentences[-1].rstrip()
            if len(sentences) > 1 and "".join(sentences) == blocks[i]["text"]:
                del blocks[i]["text"]
                blocks[i]["sentences"] = sentences
                if scores is not None:
                    blocks[i]["scores"] = [round(float(s), 2) for s in scores[start:end]]
            if scores is not None and end < len(scores):
                blocks[i]["cut"] = round(float(scores[end]), 2)
    rounds = trace.metadata.get("judge_rounds")
    if rounds is None:
        return
    if not isinstance(rounds, list) or len(rounds) != len(blocks):
        raise MementoError(f"{where}: field 'judge_rounds' must hold one list of verdicts per block ({len(blocks)})")
    for i, (block, verdicts) in enumerate(zip(trace.blocks, rounds, strict=True)):
        blocks[i]["judge"] = _verdicts(verdicts, block, f"{where}: field 'judge_rounds'[{i}]")


def _verdicts(verdicts, block: Block, where: str) -> list[dict]:
    """Every verdict the judge gave a block, the one whose memento the row kept marked `kept`."""
    if not isinstance(verdicts, list) or not all(isinstance(v, dict) for v in verdicts):
        raise MementoError(f"{where}: expected a list of verdicts (memento, score, feedback)")
    out = []
    for j, v in enumerate(verdicts):
        if not isinstance(v.get("score"), int | float):
            raise MementoError(f"{where}[{j}]: field 'score' must be a number")
        out.append({k: v[k] for k in ("score", "feedback", "memento", "parts") if v.get(k) not in (None, "", {})})
    kept = [j for j, v in enumerate(verdicts) if v.get("memento") == block.memento] or [len(out) - 1]
    if out:
        out[kept[-1]]["kept"] = True
    return out


def _entry(key, trace: Trace, body: dict, title: str | None = None, **known) -> dict:
    """The list's row of a trace: its id, title, blocks, compression and the fields the filters read."""
    block, memento = sum(b["bt"] for b in body["blocks"]), sum(b["mt"] for b in body["blocks"])
    entry = {
        "id": "" if key is None else str(key),
        "title": title or _brief(" ".join(trace.problem.split()), TITLE) or "(no prompt)",
        "blocks": len(trace.blocks),
        "ratio": round(memento / block, 4) if block else None,
    }
    kept = [v for b in body["blocks"] for v in b.get("judge", []) if v.get("kept")]
    if kept:
        entry["judge"] = "pass" if all(v["score"] >= JUDGE_PASS for v in kept) else "fail"
    entry |= {k: str(v) for k, v in known.items() if v not in (None, "")}
    return entry
