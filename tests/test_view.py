"""`memento view` in a real browser (the system's headless Chromium, through Playwright): every kind of trace file,
what the page shows of the paper's AIME trace, the KV marker greying evicted blocks, the report links, bad input."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
from helpers import AIME_TRACE, RAW_TRACE, small_trace
from typer.testing import CliRunner

import memento.cli  # noqa: F401  (registers every command)
from memento.cli.app import app
from memento.core.format import recover
from memento.core.rows import read_traces, row_from_trace
from memento.view import items, page
from memento.view.browser import chromium

pytestmark = pytest.mark.xdist_group("view")  # one worker, one browser for the module

TOY = Path(__file__).resolve().parents[1] / "memento" / "toy" / "checkpoints" / "curriculum"
PROMPT = "f:3x+H d2 x=4"  # an orbit puzzle of the toy world


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def view(source: Path, out: Path) -> Path:
    result = invoke("view", source, "--out", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The toy model (0.9M parameters) decodes token by token: one thread, else it waits on the other at every
    step (10x slower on a busy 2-core machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


class Tab:
    """A page of the viewer in a fresh tab, with every console error and uncaught exception it raised."""

    def __init__(self, browser, html: Path, anchor: str = ""):
        self.page = browser.new_page(viewport={"width": 1200, "height": 800})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(html.as_uri() + anchor)
        self.page.wait_for_selector("#trace article")

    def count(self, selector: str) -> int:
        return self.page.locator(selector).count()

    def texts(self, selector: str) -> list[str]:
        return self.page.locator(selector).all_text_contents()

    def close(self, screenshot: Path | None = None) -> None:
        if screenshot is not None:
            self.page.screenshot(path=screenshot)
        self.page.close()
        assert self.errors == []


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`memento data build` (offline) on the real QwQ trace: full rows with boundary scores and judge verdicts."""
    from memento.data.pipeline import Config, build

    out = tmp_path_factory.mktemp("build")
    build(str(RAW_TRACE), out, Config())
    return out


def test_paper_trace_blocks_mementos_and_the_kv_marker(browser, tmp_path, shared_examples):
    [trace] = read_traces(AIME_TRACE)
    n = len(trace.blocks)
    tab = Tab(browser, view(AIME_TRACE, tmp_path / "aime.html"))
    assert tab.count(".block") == n and tab.count(".memento") == n == 5
    assert [t.strip() for t in tab.texts(".memento > .text")] == [b.memento.strip() for b in trace.blocks]
    assert tab.count(".evicted") == 0  # the marker starts at the prompt
    body = items.read(AIME_TRACE)[0].body
    ends = [body["pt"]]
    for b in body["blocks"]:
        ends.append(ends[-1] + b["bt"] + b["mt"])
    tab.page.fill("#kv-marker", str(ends[3] - 1))  # writing memento 3: blocks 1-2 gone, block 3 still seen
    assert tab.count(".evicted") == 2 and tab.count(".block.current") == 1
    tab.page.fill("#kv-marker", str(ends[3]))  # memento 3 written: block 3 goes
    assert tab.count(".evicted") == 3
    assert f"KV holds {body['pt'] + sum(b['mt'] for b in body['blocks'][:3])} " in tab.texts(".readout")[0]
    tab.page.fill("#kv-marker", str(ends[-1] + body["at"]))  # in the answer: every block evicted
    assert tab.count(".evicted") == n
    tab.page.click(".block .toggle")
    assert tab.count(".block .text.folded") == n - 1
    tab.close(tmp_path / "aime.png")
    assert (tmp_path / "aime.png").stat().st_size > 10_000


def test_built_rows_show_sentences_cut_scores_and_judge_verdicts(browser, built, tmp_path):
    [row] = [json.loads(line) for line in (built / "openmementos-full.jsonl").read_text().splitlines()]
    n, scores = len(row["blocks"]), row["boundary_scores"]
    for name in ("openmementos-full.jsonl", "openmementos-full.parquet", "journal.jsonl"):
        [it] = items.read(built / name)
        assert [b.get("cut") for b in it.body["blocks"]] == [*(scores[e] for _, e in row["blocks"][:-1]), None]
        assert it.entry["judge"] in ("pass", "fail") and it.entry["domain"] == "math"
    assert items.read(built / "journal.jsonl")[0].body["unit"] == "tokens (the build's)"  # its stats' counts
    assert '"unit":"tokens (cl100k_base)"' in (built / "view.html").read_text()  # the build's page names its counter
    tab = Tab(browser, view(built / "openmementos-full.jsonl", tmp_path / "full.html"))
    assert tab.count(".block") == n and tab.count(".judge") == n
    assert tab.count(".block .bd") == sum(e - s for s, e in row["blocks"])  # a mark between two sentences of a block
    cuts = tab.page.locator(".cut").evaluate_all("cs => cs.map(c => c.className)")
    assert cuts == [f"cut s{round(scores[e])}" for _, e in row["blocks"][:-1]]
    assert tab.count(".row .badge") == 1 and tab.count(".judge.pass") + tab.count(".judge.fail") == n
    assert tab.count(".parts") == n  # the judge's points per rubric dimension, under each memento
    tab.close(tmp_path / "full.png")
    tab = Tab(browser, view(built / "openmementos.jsonl", tmp_path / "default.html"))  # default rows: text only
    assert tab.count(".block") == n and tab.count(".judge") == tab.count(".bd") == 0  # no scores, no key
    tab.close()


def test_the_build_report_links_its_traces_to_the_view(browser, built):
    report = (built / "report.md").read_text()
    assert "[view.html](view.html)" in report
    trace_id = json.loads((built / "openmementos.jsonl").read_text())["id"]
    link = page.link("view.html", trace_id)
    assert f"]({link}), memento " in report  # the mementos that fail the judge, each linked
    tab = Tab(browser, built / "view.html", link.removeprefix("view.html"))
    assert tab.texts("#trace .id") == [trace_id]
    tab.close()


def test_generate_json_output(browser, tmp_path):
    result = invoke("generate", PROMPT, "--model", TOY, "--mask-delimiters", "--max-new-tokens", 1000, "--json")
    assert result.exit_code == 0, result.output
    source = tmp_path / "generated.json"
    source.write_text(result.stdout)
    data = json.loads(result.stdout)
    tab = Tab(browser, view(source, tmp_path / "generated.html"))
    assert tab.count(".block") == len(data["trace"]["blocks"]) >= 3
    assert "peak_kv_tokens" in tab.texts(".meta dt") and tab.texts("#count") == ["1 of 1 traces"]
    tab.close()


def test_eval_results_and_the_report_links_what_went_wrong(browser, tmp_path):
    from memento.eval.report import RunSpec, run_all
    from memento.toy.experiments import EVICT

    out = tmp_path / "eval"
    runs = [RunSpec("memento", str(TOY), asdict(EVICT))]
    run_all(runs, ["toy:orbit"], out, {"max_new_tokens": 300}, limit=2, batch_size=2, progress=False)
    results = out / "memento" / "toy-orbit" / "results.jsonl"
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["outcome"] for r in records] == ["no_answer", "no_answer"]  # 300 tokens: cut off inside <think>
    tab = Tab(browser, view(results, tmp_path / "results.html"))
    assert tab.count(".row") == 2 and tab.texts(".row .badge") == ["no_answer", "no_answer"]
    blocks = len(recover(records[0]["text"].removesuffix("<|im_end|>")).trace.blocks)
    assert tab.count(".block") == blocks and "dropped unclosed block at end of text" in tab.texts(".note")[0]
    tab.close()
    report = (out / "report.md").read_text()
    link = page.link("view.html", "memento/toy-orbit/orbit/1#0")
    assert f"- [orbit/1 · sample 0]({link}): no_answer" in report
    tab = Tab(browser, out / "view.html", link.removeprefix("view.html"))
    assert tab.texts("#trace .id") == ["memento/toy-orbit/orbit/1#0"] and tab.count(".row.active") == 1
    tab.close()


def test_many_traces_search_filters_and_escaping(browser, tmp_path):
    """2,000 traces: only the rows in sight are in the DOM; search and filters narrow the list; text that would end
    a script tag shows as text."""
    rows = []
    for k in range(2000):
        trace = small_trace(1 + k % 4)
        trace.metadata = {"id": f"t{k}", "domain": ("math", "code")[k % 2]}
        rows.append(row_from_trace(trace))
    rows[7]["problem"] = "Escape </script><script>window.broken = 1</script> and <!-- this"
    source = tmp_path / "many.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tab = Tab(browser, view(source, tmp_path / "many.html"), "#trace=t7")
    assert tab.texts("#count") == ["2000 of 2000 traces"] and tab.count(".row") < 40
    assert tab.page.evaluate("window.broken") is None
    assert "</script><script>window.broken = 1</script>" in tab.texts("#trace h2")[0]
    tab.page.select_option("#f-domain", "code")
    tab.page.fill("#f-blocks-min", "4")
    tab.page.dispatch_event("#f-blocks-min", "change")
    assert tab.texts("#count") == ["500 of 2000 traces"]
    tab.page.fill("#search", "t1999")
    tab.page.wait_for_function("document.getElementById('count').textContent.startsWith('1 of')")
    tab.page.click(".row")
    assert tab.texts("#trace .id") == ["t1999"] and tab.page.evaluate("location.hash") == "#trace=t1999"
    tab.close()


def test_bad_input_is_named_by_file_line_and_field(tmp_path, shared_examples):
    good = json.dumps(row_from_trace(small_trace()))
    cases = {
        '{"problem": "p", "cot": "<think>x</think>"}': "line 2: not a trace",
        '{"problem": 3, "response": "x"}': "2: field 'problem' must be str",
        json.dumps({**json.loads(good), "sentences": ["a"], "blocks": [[0, 0]] * 3, "block_summaries": []}): (
            "2: the response has 3 blocks but 'blocks' has 3 ranges and 'block_summaries' 0 entries"
        ),
    }
    for n, (line, message) in enumerate(cases.items()):
        path = tmp_path / f"bad{n}.jsonl"
        path.write_text(good + "\n" + line + "\n")
        result = invoke("view", path)
        assert result.exit_code == 2 and message.replace("line 2", f"{path}:2") in " ".join(result.output.split())
    [row] = [row_from_trace(read_traces(AIME_TRACE)[0], "full")]
    row["boundary_scores"] = [1.0]
    path = tmp_path / "scores.json"
    path.write_text(json.dumps(row))
    result = invoke("view", path)
    assert result.exit_code == 2 and "field 'boundary_scores' has 1 scores" in result.output
    assert not (tmp_path / "scores.html").exists()


def test_the_judge_pass_mark_is_the_pipelines():
    from memento.data.judge import PASS

    assert items.JUDGE_PASS == PASS
