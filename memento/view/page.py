"""View items -> one self-contained HTML page: the template, its CSS and JS (package data, read with
`importlib.resources`) and the traces as JSON in `<script type="application/json">` tags. Nothing is fetched when
the page is viewed.

Design choices:
- The list's index (a few fields per trace) is one JSON blob placed before the viewer's script, so the list is drawn
  as soon as the parser reaches it; each trace's body is its own blob after the script, parsed only when the trace
  is opened. A page of 10,000 traces (hundreds of MB) shows its list before the rest of the file has been read.
- Every `<` in the JSON is written `\\u003c`: no `</script>` or `<!--` in the data can end or change its tag.
- The output depends on the items only (no dates): a resumed `memento data build` writes the same bytes.
"""

from __future__ import annotations

import html
import json
import re
from importlib import resources
from pathlib import Path
from urllib.parse import quote

from memento.view.items import JUDGE_PASS, Item

INDEX_ID = "memento-index"
REPORT_LIMIT = 10_000  # traces on the page a report writes beside it (`memento view` on a part shows the rest)
BODY_ID = "t{}"  # the body of trace k (its position in the index)


def _asset(name: str) -> str:
    return resources.files("memento.view").joinpath(name).read_text(encoding="utf-8")


def _json(data) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def render(items: list[Item], title: str) -> str:
    """The page's HTML text."""
    index = {"title": title, "pass": JUDGE_PASS, "items": [it.entry for it in items]}
    bodies = "".join(
        f'<script type="application/json" id="{BODY_ID.format(k)}">{_json(it.body)}</script>\n'
        for k, it in enumerate(items)
    )
    parts = {
        "title": html.escape(title),
        "css": _asset("viewer.css"),
        "index": f'<script type="application/json" id="{INDEX_ID}">{_json(index)}</script>',
        "js": _asset("viewer.js"),
        "bodies": bodies,
    }
    return re.sub(r"\{\{(\w+)\}\}", lambda m: parts[m[1]], _asset("template.html"))  # one pass: data is never rescanned


def write(items: list[Item], path: str | Path, title: str | None = None) -> Path:
    """Write the page to `path` (lone surrogates in the texts, which UTF-8 cannot hold, become U+FFFD)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(items, title or path.stem), encoding="utf-8", errors="replace")
    return path


def link(page: str, trace_id: str) -> str:
    """The address of one trace on a page (relative to the page's folder): `view.html#trace=ID`, which the viewer
    opens on load."""
    return f"{page}#trace={quote(trace_id, safe='')}"
