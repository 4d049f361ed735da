"""Benchmark rows from a local file or from the Hugging Face Hub, with errors that say what to fix.

`rows(path, hub)` reads `path` when one is given (`.jsonl`, `.json` holding a list of objects, `.parquet`, `.csv`),
else the files `hub` names in a dataset repository of the Hub. Every row must have the source's `fields`.

The Hub files are fetched with `huggingface_hub.snapshot_download` (only the named files) into the usual Hugging Face
cache, so they are downloaded once; without network access the cached copy is used, and without one the error names
the fields a local file needs. Files are read directly rather than through `datasets.load_dataset`, which no longer
runs the loading scripts some benchmark repositories (LiveCodeBench) are built on.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from memento.core.errors import MementoError

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


@dataclass(frozen=True)
class HubSource:
    task: str  # the task's name, for messages
    repo: str  # a dataset repository on the Hub
    files: tuple[str, ...]  # the files to read, in this order (glob patterns, e.g. "data/train-*")
    fields: tuple[str, ...]  # the fields every row must have
    gated: bool = False  # the repository asks each user to accept its terms first


def rows(path: str | Path | None, hub: HubSource) -> list[dict]:
    """The rows of the local file `path`, or (`path` empty) of `hub`'s files on the Hub."""
    files = [Path(path)] if path else _download(hub)
    return [row for file in files for row in read(file, hub.fields)]


def read(path: Path, fields: tuple[str, ...] = ()) -> list[dict]:
    """The rows of a `.jsonl` / `.json` / `.parquet` / `.csv` file, each checked for `fields`."""
    if not path.is_file():
        raise MementoError(f"{path}: no such file")
    readers = {".jsonl": _jsonl, ".json": _json, ".parquet": _parquet, ".csv": _csv}
    if path.suffix not in readers:
        raise MementoError(f"{path}: unknown format; give a {', '.join(SUFFIXES)} file")
    found = []
    for where, row in readers[path.suffix](path):
        if not isinstance(row, dict):
            raise MementoError(f"{where}: a row must be an object with fields, not {type(row).__name__}")
        if missing := [f for f in fields if f not in row]:
            raise MementoError(f"{where}: no field {missing[0]!r} (the row has: {', '.join(map(str, row)) or 'none'})")
        found.append(row)
    return found


def _jsonl(path: Path) -> Iterator[tuple[str, object]]:
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield f"{path}:{number}", json.loads(line)
                except json.JSONDecodeError as e:
                    raise MementoError(f"{path}:{number}: not a JSON object ({e.msg})") from None


def _json(path: Path) -> Iterator[tuple[str, object]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise MementoError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise MementoError(f"{path}: expected a JSON list of rows, found {type(data).__name__}")
    yield from ((f"{path}, row {i}", row) for i, row in enumerate(data, 1))


def _parquet(path: Path) -> Iterator[tuple[str, object]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise MementoError(f"{path}: not a readable Parquet file ({e})") from None
    yield from ((f"{path}, row {i}", row) for i, row in enumerate(table.to_pylist(), 1))


def _csv(path: Path) -> Iterator[tuple[str, object]]:
    with path.open(encoding="utf-8", newline="") as f:
        yield from ((f"{path}, row {i}", row) for i, row in enumerate(csv.DictReader(f), 1))


def _download(hub: HubSource) -> list[Path]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    page = f"https://huggingface.co/datasets/{hub.repo}"
    local = (
        f"or pass a local file ({', '.join(SUFFIXES)}) whose rows have the fields {', '.join(hub.fields)} "
        f"as `{hub.task}:/path/to/file.jsonl`"
    )
    try:
        folder = Path(snapshot_download(hub.repo, repo_type="dataset", allow_patterns=list(hub.files)))
    except LocalEntryNotFoundError as e:  # no connection (or offline mode) and nothing cached
        token = " (with a token: the repository is gated)" if hub.gated else ""
        raise MementoError(
            f"task {hub.task}: no network access to the Hugging Face Hub (or HF_HUB_OFFLINE is set) "
            f"and no copy of {hub.repo} in the local cache; connect once{token} to download it, "
            f"{local}"
        ) from e
    except Exception as e:  # gated, not found, refused, a connection dropped mid-download...
        status = getattr(getattr(e, "response", None), "status_code", None)
        if hub.gated and (isinstance(e, RepositoryNotFoundError) or status in (401, 403)):  # GatedRepoError included
            raise MementoError(
                f"task {hub.task}: {hub.repo} is gated: accept its terms at {page} while logged in, "
                f"then log in here (`hf auth login`) or set HF_TOKEN; {local}"
            ) from e
        raise MementoError(f"task {hub.task}: could not download {hub.repo} from the Hub ({e}); {local}") from e
    files = []
    for pattern in hub.files:
        if not (matched := sorted(folder.glob(pattern))):
            raise MementoError(f"task {hub.task}: {hub.repo} has no file {pattern!r} (see {page}/tree/main); {local}")
        files += matched
    return files
