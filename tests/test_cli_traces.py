"""`memento inspect` and `memento kv` as a user meets them: what the plot and the text say, warnings, errors."""

from __future__ import annotations

import json

from helpers import AIME_TRACE
from typer.testing import CliRunner

import memento.cli  # noqa: F401  (registers every command)
from memento.cli.app import app
from memento.core.format import Trace
from memento.core.rows import read_traces, row_from_trace


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def two_traces(tmp_path):
    """The paper's trace and its first two blocks: two traces with different peak ratios."""
    [paper] = read_traces(AIME_TRACE)
    short = Trace(paper.problem, paper.blocks[:2], paper.answer)
    path = tmp_path / "two.jsonl"
    path.write_text("".join(json.dumps(row_from_trace(t)) + "\n" for t in (paper, short)))
    return path


def test_kv_plot_title_is_the_plotted_traces_and_the_text_says_mean(tmp_path, monkeypatch, shared_examples):
    import memento.core.kv as kv

    titles = []
    plot = kv.plot_sawtooth
    monkeypatch.setattr(kv, "plot_sawtooth", lambda c, path, title: titles.append(title) or plot(c, path, title))
    path = two_traces(tmp_path)
    args = ("kv", path, "--model", "qwen3-8b", "--policy", "keep1", "--index", "1", "--plot", tmp_path / "x.png")
    result = json.loads(invoke(*args, "--json").stdout)
    one, mean = result["traces"][1]["peak_ratio"], result["peak_ratio"]
    assert f"{one:.2f}" != f"{mean:.2f}"
    assert titles == [f"qwen3-8b, keep1, trace index 1: peak {one:.2f}x lower"]
    text = invoke(*args).stdout
    assert "mean over the 2 traces of each trace's peak and AUC; ratios of the means" in text
    assert "mean peak KV: full" in text and f"({mean:.2f}x lower)" in text
    assert f"(trace index 1: peak {one:.2f}x lower)" in text


def test_inspect_lenient_warns_what_it_dropped(tmp_path):
    response = (
        "<think>\n<|block_start|>first<|block_end|>\n<|summary_start|>m1<|summary_end|>\n"
        "<|block_start|>second, never summarised<|block_end|>\n</think>\n\nA"
    )
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"problem": "p", "response": response}) + "\n")
    result = invoke("inspect", path, "--lenient", "--json", "--tokenizer", "chars")
    assert result.exit_code == 0 and json.loads(result.stdout)["traces"][0]["blocks"] == 1
    assert (
        f"warning: {path}:1: field 'response': --lenient dropped block with no memento: </think> after <|block_end|> "
        "(at character 77): 'second, never summarised'" in result.stderr
    )
    assert "warning" not in invoke("inspect", AIME_TRACE, "--lenient", "--json").stderr  # nothing dropped: quiet


def test_kv_model_folder_without_config_and_unsupported_files(tmp_path, shared_examples):
    result = invoke("kv", AIME_TRACE, "--model", tmp_path)
    assert result.exit_code == 2
    assert f"error: {tmp_path}: no config.json, so not a Hugging Face model folder" in result.stderr
    assert "model_type" not in result.stderr
    raw = tmp_path / "trace.txt"
    raw.write_text("<think>raw reasoning</think> 4\n")
    result = invoke("inspect", raw)
    assert result.exit_code == 2 and "invalid JSON" not in result.stderr
    assert f"error: {raw}: unsupported format '.txt': give a .jsonl, .json or .parquet file" in result.stderr


def test_tokenizer_help_explains_every_choice():
    for command in ("inspect", "kv"):
        help_text = " ".join(invoke(command, "--help").stdout.replace("│", " ").split())
        assert "chars (the toy world's one token per character)" in help_text, command
