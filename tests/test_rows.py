from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from test_format import traces

from memento.core.errors import MementoError
from memento.core.format import parse, render
from memento.core.rows import read_traces, row_from_trace, segments_from_trace, trace_from_row, write_rows


def test_paper_example_has_five_blocks_mementos_and_answer(shared_examples):
    [trace] = read_traces(shared_examples / "memento_trace_aime25_p5.json")
    assert len(trace.blocks) == 5
    assert all(b.text and b.memento for b in trace.blocks)
    assert trace.blocks[0].text.startswith("Okay, so I need to find")
    assert trace.blocks[2].memento.startswith("With r+s=24 and r-s=12*sqrt(3)")
    assert "\\boxed{504}" in trace.answer
    assert trace.metadata["answer"] == "504"
    # rendering then parsing is lossless
    assert parse(render(trace), trace.problem, trace.metadata) == trace


def test_segments_roundtrip_is_byte_identical(shared_examples):
    src = shared_examples / "memento_trace_aime25_p5.json"
    [trace] = read_traces(src)
    assert segments_from_trace(trace) == json.loads(src.read_text())


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("config", ["default", "full"])
def test_rows_roundtrip(tmp_path, suffix, config, shared_examples):
    [paper] = read_traces(shared_examples / "memento_trace_aime25_p5.json")
    paper.metadata = {"domain": "math", "source": "aime", "difficulty": 7}
    paper.sentences = [s for b in paper.blocks for s in (b.text[:50], b.text[50:])]
    paper.block_ranges = [(2 * i, 2 * i + 1) for i in range(len(paper.blocks))]
    path = write_rows([paper, paper], tmp_path / f"rows{suffix}", config)
    back = read_traces(path)
    assert len(back) == 2
    if config == "default":
        paper.sentences = paper.block_ranges = None
    assert back[0] == paper


def test_default_row_has_openmementos_columns(shared_examples):
    [trace] = read_traces(shared_examples / "memento_trace_aime25_p5.json")
    row = row_from_trace(trace)
    assert list(row)[:5] == ["problem", "response", "domain", "source", "difficulty"]
    full = row_from_trace(trace, "full")
    assert full["blocks"] == [[i, i] for i in range(5)]  # one sentence per block when no split is known
    assert full["block_summaries"] == [b.memento for b in trace.blocks]


def test_written_rows_load_with_datasets(tmp_path, shared_examples):
    import datasets

    [trace] = read_traces(shared_examples / "memento_trace_aime25_p5.json")
    path = write_rows([trace] * 3, tmp_path / "rows.jsonl", "full")
    ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == 3
    assert parse(ds[0]["response"]).blocks == trace.blocks


def test_full_row_with_end_exclusive_ranges_is_read_inclusive():
    trace = parse("<think><|block_start|>a b<|block_end|><|summary_start|>m<|summary_end|></think>A")
    row = {
        "problem": "p",
        "response": render(trace),
        "sentences": ["a", "b"],
        "blocks": [[0, 2]],
        "block_summaries": ["m"],
    }
    assert trace_from_row(row).block_ranges == [(0, 1)]


@settings(max_examples=100, deadline=None)
@given(traces)
def test_row_roundtrip_property(trace):
    assert trace_from_row(row_from_trace(trace, "full")).blocks == trace.blocks


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"problem": "p"}\n', "rows.jsonl:1: missing field 'response'"),
        ('{"problem": "p", "response": 3}\n', "rows.jsonl:1: field 'response' must be str, got int"),
        (
            '\n{"problem": "p", "response": "<think><|block_start|>x"}\n',
            "rows.jsonl:2: field 'response': unclosed block at end of text (at character 7)",
        ),
        ("{not json\n", "rows.jsonl:1: invalid JSON"),
        ("[1]\n", "rows.jsonl:1: expected a JSON object, got list"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, content, message):
    path = tmp_path / "rows.jsonl"
    path.write_text(content)
    with pytest.raises(MementoError) as info:
        read_traces(path)
    assert str(info.value).startswith(str(tmp_path / message.split(":")[0]))
    assert message in str(info.value)


def test_bad_segments_and_files(tmp_path):
    bad = tmp_path / "seg.json"
    bad.write_text(json.dumps({"problem": "p", "segments": [{"type": "summary", "block_idx": 1, "text": "m"}]}))
    with pytest.raises(MementoError, match=r"segments\[0\]: summary of block 1 has no matching block"):
        read_traces(bad)
    with pytest.raises(MementoError, match="cannot read"):
        read_traces(tmp_path / "missing.jsonl")
    with pytest.raises(MementoError, match="cannot read"):
        read_traces(tmp_path)  # a folder
    (tmp_path / "x.parquet").write_text("not parquet")
    with pytest.raises(MementoError, match="cannot read as Parquet"):
        read_traces(tmp_path / "x.parquet")


def test_lenient_rows_recover(tmp_path):
    path = tmp_path / "rows.jsonl"
    response = "<think><|block_start|>a<|block_end|><|summary_start|>m<|summary_end|><|block_start|>x</think>A"
    path.write_text(json.dumps({"problem": "p", "response": response}) + "\n")
    with pytest.raises(MementoError):
        read_traces(path)
    [trace] = read_traces(path, lenient=True)
    assert len(trace.blocks) == 1 and trace.answer == "A"


def test_unicode_line_separators_and_mixed_types_round_trip(tmp_path):
    from memento.core.format import Block, Trace

    traces = [
        Trace("p\u2028q", [Block("a\u2029b\x85c", "m")], "A", {"difficulty": 3, "extra": [1]}),
        Trace("p", [Block("b", "m")], "A", {"difficulty": "hard", "note": "only here"}),
    ]
    for suffix in (".jsonl", ".parquet"):
        back = read_traces(write_rows(traces, tmp_path / f"rows{suffix}"))
        assert [t.blocks for t in back] == [t.blocks for t in traces] and back[0].problem == "p\u2028q"
        assert back[1].metadata["note"] == "only here"
    assert read_traces(tmp_path / "rows.jsonl")[0].metadata["difficulty"] == 3
