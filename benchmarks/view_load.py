"""How fast `memento view` opens a 10,000-trace page in headless Chromium.

The rows are the real example traces, replicated with varied ids and domains: the paper's AIME 2025 P5 trace (an
OpenMementos `full` row, 5 blocks) and the QwQ trace of `raw_trace_ot3.jsonl` built by `memento data build` offline
(a `full` row with boundary scores and judge verdicts, 12 blocks), alternating. Measured: writing the page (Python),
then per load in a fresh tab: the list drawn (the viewer's own mark, ms after navigation start), first paint,
DOMContentLoaded (every trace body read), the first trace shown, the last trace (opened at once through
`#trace=ID`: its body comes last) shown, and a filter over all traces.

    .venv/bin/python benchmarks/view_load.py [--rows 10000] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from results_file import header, write  # benchmarks/results_file.py (scripts run from benchmarks/)

from memento.core.rows import read_traces, row_from_trace
from memento.data.pipeline import Config, build
from memento.view import items, page
from memento.view.browser import chromium

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "memento-examples"
DOMAINS = ("math", "code", "science", "puzzle")

TIMES = """() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const paint = performance.getEntriesByType("paint").find(p => p.name === "first-contentful-paint");
  return {list_ms: window.mementoView.listReadyMs, first_paint_ms: paint ? paint.startTime : null,
          dom_ms: nav.domContentLoadedEventEnd, load_ms: nav.loadEventEnd};
}"""
FILTER = """() => {
  const t = performance.now();
  const box = document.getElementById("f-ratio-min");
  box.value = "0.1";
  box.dispatchEvent(new Event("change", {bubbles: true}));
  const ms = performance.now() - t;
  const shown = document.getElementById("count").textContent;
  box.value = "";
  box.dispatchEvent(new Event("change", {bubbles: true}));
  return {filter_ms: ms, shown: shown};
}"""


def source_rows(tmp: Path) -> list[dict]:
    [aime] = read_traces(EXAMPLES / "memento_trace_aime25_p5.json")
    build(str(EXAMPLES / "raw_trace_ot3.jsonl"), tmp / "build", Config())
    qwq = json.loads((tmp / "build" / "openmementos-full.jsonl").read_text())
    return [row_from_trace(aime, "full"), qwq]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        sources = source_rows(tmp)
        rows = tmp / "rows.jsonl"
        with rows.open("w") as f:
            for n in range(args.rows):
                row = dict(sources[n % len(sources)], id=f"bench-{n:05d}", domain=DOMAINS[n % len(DOMAINS)])
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        began = time.perf_counter()
        made = items.read(rows)
        read_s = time.perf_counter() - began
        html = page.write(made, tmp / "rows.html")
        write_s = time.perf_counter() - began - read_s
        loads = []
        with chromium() as browser:
            for _ in range(args.runs):
                tab = browser.new_page(viewport={"width": 1200, "height": 800})
                errors = []
                tab.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
                began = time.perf_counter()
                tab.goto(html.as_uri(), wait_until="commit")
                tab.wait_for_function("window.mementoView !== undefined")
                list_wall = time.perf_counter() - began
                tab.wait_for_selector(".pair", timeout=60_000)
                shown_wall = time.perf_counter() - began
                first_ms = tab.evaluate("window.mementoView.traceShownMs")
                last = f"bench-{args.rows - 1:05d}"  # at the end of the file: read last
                tab.evaluate(f"location.hash = '#trace={last}'")
                tab.wait_for_function(
                    f"document.querySelector('#trace .id')?.textContent === '{last}'", timeout=120_000
                )
                last_wall = time.perf_counter() - began
                tab.wait_for_load_state("load")
                load = tab.evaluate(TIMES) | tab.evaluate(FILTER)
                load |= {"first_trace_ms": first_ms, "last_trace_ms": tab.evaluate("window.mementoView.traceShownMs")}
                load |= {"list_wall_s": list_wall, "first_trace_wall_s": shown_wall, "last_trace_wall_s": last_wall}
                load["errors"] = errors
                loads.append(load)
                tab.close()
        sizes = {"rows": args.rows, "input_mb": rows.stat().st_size / 1e6, "html_mb": html.stat().st_size / 1e6}
    data = {**sizes, "read_s": read_s, "write_s": write_s, "loads": loads}
    keys = ("list_ms", "first_paint_ms", "first_trace_ms", "dom_ms", "last_trace_ms", "load_ms", "filter_ms")
    median = {k: float(np.median([x[k] for x in loads])) for k in keys}
    data["median"] = median
    lines = header(
        f"memento view: a {args.rows:,}-trace page in headless Chromium",
        "view_load.py",
        "Rows: the paper's AIME trace and the offline build of the QwQ trace (full rows: boundary scores, judge), "
        f"alternating, varied ids; {args.runs} loads, each in a fresh tab; system Chromium. Times in ms from the "
        "start of the navigation, as the page measures them (the viewer's own marks and the Navigation Timing API); "
        "the last trace is opened (`#trace=ID`) as soon as the first shows, and its body is the file's last.",
    )
    lines += [
        f"Input {sizes['input_mb']:.0f} MB of JSONL -> page {sizes['html_mb']:.0f} MB; reading the rows "
        f"{read_s:.1f} s, writing the page {write_s:.1f} s (Python).",
        "",
        "| load | first paint | list drawn | first trace shown | all read (DOMContentLoaded) | last trace shown | "
        "load | a filter over all |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, x in enumerate(loads, 1):
        cells = [x[k] for k in ("first_paint_ms", "list_ms", "first_trace_ms", "dom_ms", "last_trace_ms", "load_ms")]
        lines.append(f"| {n} | " + " | ".join(f"{c:.0f}" for c in cells) + f" | {x['filter_ms']:.1f} |")
    lines += [
        "",
        f"Median: first paint {median['first_paint_ms']:.0f} ms, the list drawn {median['list_ms']:.0f} ms, the "
        f"first trace shown {median['first_trace_ms']:.0f} ms; the whole page read {median['dom_ms']:.0f} ms (the "
        f"last trace shown {median['last_trace_ms']:.0f} ms); filtering {args.rows:,} traces "
        f"{median['filter_ms']:.1f} ms. Page errors: {sum(len(x['errors']) for x in loads)}.",
    ]
    write("view_load", data, lines)


if __name__ == "__main__":
    main()
