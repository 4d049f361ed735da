"""Raw reasoning traces to build Memento data from.

- JSONL / Parquet files with `problem` and `cot` or `response` (OpenThoughts style: `<think>...</think>answer`);
  an id from `task_id` / `id` when present, `domain` / `source` / `difficulty` kept.
- `hf:NAME[:SPLIT]`: a Hugging Face dataset with the same fields (a hub name when online, or a local folder of
  data files), read with `datasets.load_dataset`; split `train` by default.
- `champ`: the champ-dataset package's LLM-written solutions to 270 competition problems (real text, offline);
  the solution is the reasoning, the model's one-sentence summary the answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from memento.core.errors import MementoError
from memento.core.rows import read_objects

KEEP = ("domain", "source", "difficulty")


class RawTrace(NamedTuple):
    id: str
    problem: str
    reasoning: str  # the chain of thought, without <think> tags
    answer: str
    metadata: dict
    text: str = ""  # the raw response the reasoning came from (empty: built, not read; no seed filter applies)


def split_think(text: str) -> tuple[str, str]:
    """(reasoning, answer) of `<think>reasoning</think>answer`; all reasoning when there are no tags."""
    start = text.find("<think>")
    end = text.find("</think>")
    if end < 0:
        return text[start + len("<think>") :] if start >= 0 else text, ""
    return text[start + len("<think>") if start >= 0 else 0 : end], text[end + len("</think>") :].strip()


def iter_raw(spec: str) -> Iterator[RawTrace]:
    if spec == "champ":
        yield from _champ()
        return
    if spec.startswith("hf:"):
        rows = ((f"{spec}: row {n}", row) for n, row in _hf(spec[3:]))
    else:
        path = Path(spec)
        if not path.exists():
            raise MementoError(f"{spec}: no such file (give a JSONL/Parquet file of traces, hf:NAME or 'champ')")
        rows = read_objects(path)
    for n, (where, row) in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get("problem"), str):
            raise MementoError(f"{where}: expected an object with a string field 'problem'")
        text = row.get("cot") or row.get("response")  # a null cot column falls back to response
        if not isinstance(text, str) or not text:
            given = [k for k in ("cot", "response") if row.get(k) is not None]
            if not given:
                raise MementoError(f"{where}: missing field 'cot' or 'response' (the raw chain of thought)")
            value = row[given[0]]
            if value == "":
                raise MementoError(f"{where}: field '{given[0]}' is empty (no chain of thought)")
            raise MementoError(f"{where}: field '{given[0]}' must be str, got {type(value).__name__}")
        reasoning, answer = split_think(text)
        rid = str(row.get("task_id") or row.get("id") or f"{Path(spec).stem}-{n}")
        yield RawTrace(rid, row["problem"], reasoning, answer, {k: row[k] for k in KEEP if k in row}, text)


CJK = re.compile("[\u4e00-\u9fff]")


def seed_filter(raw: RawTrace, count_tokens, max_tokens: int | None) -> str | None:
    """Why the release's seed step would drop this trace (None: keep it): a response without `</think>`, with CJK
    ideographs, or with more than `max_tokens` tokens of reasoning."""
    if not raw.text:
        return None
    if "</think>" not in raw.text:
        return "no </think>"
    if CJK.search(raw.text):
        return "CJK text"
    if max_tokens is not None and count_tokens([raw.reasoning])[0] > max_tokens:
        return f"over {max_tokens} tokens"
    return None


def _hf(name: str) -> Iterator[tuple[int, object]]:
    import datasets

    name, _, split = name.partition(":") if not Path(name).exists() else (name, "", "")
    try:
        dataset = datasets.load_dataset(name, split=split or "train")
    except Exception as e:  # offline, unknown name, missing split: datasets raises many kinds
        raise MementoError(f"hf:{name}: cannot load the dataset: {type(e).__name__}: {e}") from None
    yield from enumerate(dataset, 1)


def _champ() -> Iterator[RawTrace]:
    try:
        import champ_dataset
    except ImportError:
        raise MementoError("the 'champ' source needs the champ-dataset package (pip install champ-dataset)") from None
    dataset = champ_dataset.load("v0")
    for pid in sorted(dataset.problems):
        problem = dataset.problems[pid]
        for key in sorted(problem.conversations):
            replies = [m for m in problem.conversations[key].messages if m.role.startswith("Model") and not m.error]
            if not replies or not replies[0].text.strip():
                continue
            answer = replies[1].text.strip() if len(replies) > 1 else ""
            model, prompt = key.split("|", 1)
            metadata = {"domain": "math", "source": f"champ/{model}/{prompt}", "difficulty": problem.category}
            yield RawTrace(f"champ-{pid}-{key}", problem.text, replies[0].text, answer, metadata)
