"""Prompt sources: chat formats, counted skips, clear errors on bad input (no model needed)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from selfspec.data.magpie import clean
from selfspec.data.prompts import collect, normalize, source_records
from selfspec.utils import SelfspecError
from tests.data.conftest import write_jsonl


def test_formats_normalise_to_user_turns():
    share = {
        "conversations": [
            {"from": "system", "value": "S"},
            {"from": "human", "value": " hi "},
            {"from": "gpt", "value": "old answer"},
            {"from": "human", "value": "more"},
        ]
    }
    assert normalize(share) == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "more"},
    ]
    oai = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    assert normalize(oai) == [{"role": "user", "content": "a"}]  # the source's final answer is regenerated
    assert normalize({"prompt": "p"}) == [{"role": "user", "content": "p"}]


def test_bad_records_are_counted(tmp_path):
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"prompt": "good"},
            "{not json",
            {"text": "unknown format"},
            {"prompt": "  "},
            {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
            {"messages": [{"role": "tool", "content": "a"}]},
        ],
    )
    convs, skipped = collect(source_records("jsonl", str(path)), limit=0)
    assert convs == [[{"role": "user", "content": "good"}]]
    assert skipped == {
        "not valid JSON": 1,
        "unknown format": 1,
        "empty prompt": 1,
        "turns do not alternate": 1,
        "unsupported role": 1,
    }


@pytest.mark.parametrize("content", ["", "\n\n", "garbage\x00\xff{{{\n", '{"text": "x"}\n'])
def test_unusable_file_is_one_clear_error(tmp_path, content):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, errors="surrogateescape")
    with pytest.raises(SelfspecError, match="no usable conversation"):
        collect(source_records("jsonl", str(path)), limit=0)


def test_missing_or_garbled_files(tmp_path):
    with pytest.raises(SelfspecError, match="not a file"):
        source_records("jsonl", str(tmp_path / "nope.jsonl"))
    with pytest.raises(SelfspecError, match="unknown data.source"):
        source_records("csv", "x")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(SelfspecError, match="cannot read parquet"):
        list(source_records("parquet", str(bad)))


def test_parquet_source(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "one"}, {"prompt": "two"}]), path)
    convs, _ = collect(source_records("parquet", str(path)), limit=1)
    assert convs == [[{"role": "user", "content": "one"}]]


def test_clean_drops_unprintable():
    assert clean("a\x00b\ufffd  c\n\n\n\nd") == ("ab c\n\nd", 2)


def test_unreachable_hub_dataset_is_one_clear_error():
    with pytest.raises(SelfspecError, match="cannot load hub dataset"):
        list(source_records("hub", "selfspec-test/does-not-exist"))
    with pytest.raises(SelfspecError, match="needs data.path"):
        source_records("hub", None)
