"""Unit tests of the bench's parts that need no model: prompt files, round counting, rendering, merging."""

from __future__ import annotations

import json

import pytest

from selfspec.decode.bench.baselines import (
    ForwardRecord,
    position_counts,
    rounds_from_records,
    trim_new_tokens,
)
from selfspec.decode.bench.prompts import load_prompts_file, read_prompts_file
from selfspec.decode.bench.render import merge_reports, render_markdown
from selfspec.utils import SelfspecError


def _write(tmp_path, text: str):
    path = tmp_path / "prompts.jsonl"
    path.write_text(text)
    return path


def test_prompts_file_both_forms(tmp_path):
    path = _write(
        tmp_path,
        '{"prompt": "hi"}\n\n'
        '{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "yo"},'
        ' {"role": "assistant", "content": "dropped"}]}\n',
    )
    convs = read_prompts_file(path)
    assert convs[0] == [{"role": "user", "content": "hi"}]
    assert [m["role"] for m in convs[1]] == ["system", "user"]  # trailing assistant turn removed


def test_prompts_file_encodes_with_chat_template(tmp_path, tiny_target):
    _, tok = tiny_target
    ids = load_prompts_file(_write(tmp_path, '{"prompt": "hi"}\n{"prompt": "there"}\n'), tok, num_prompts=1)
    assert len(ids) == 1
    assert tok.decode(ids[0]).endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "has no prompts"),
        ('{"prompt": "a"}\n{not json}\n', "prompts.jsonl:2: not valid JSON"),
        ('["a list"]\n', "prompts.jsonl:1: expected an object"),
        ('{"text": "x"}\n', 'no "messages" or "prompt" key'),
        ('{"prompt": ""}\n', '"prompt" must be a non-empty string'),
        ('{"messages": [{"role": "user"}]}\n', '"messages" must be a non-empty list'),
    ],
)
def test_prompts_file_errors_are_one_line(tmp_path, text, message):
    with pytest.raises(SelfspecError, match=message) as err:
        read_prompts_file(_write(tmp_path, text))
    assert "\n" not in str(err.value)


def test_prompts_file_missing(tmp_path):
    with pytest.raises(SelfspecError, match="does not exist"):
        read_prompts_file(tmp_path / "nope.jsonl")


def test_rounds_from_transformers_forward_records():
    # Prompt of 10 tokens. Round 0 feeds prompt + 3 candidates; the next round starts at 12, so 13 tokens are
    # known (the last one uncached): 3 emitted = 2 accepted + the bonus. Round 1 feeds 1 + 2 candidates and the
    # next starts at 13: 1 emitted, 0 accepted. Round 2 is the last, left out.
    records = [ForwardRecord(0, 13), ForwardRecord(12, 3), ForwardRecord(13, 4)]
    rounds = rounds_from_records(records, prompt_len=10)
    assert rounds == [(3, 2), (2, 0)]
    reached, accepted = position_counts(rounds)
    assert reached == [2, 1, 1] and accepted == [1, 1, 0]


def test_trim_new_tokens_cuts_after_eos():
    assert trim_new_tokens([5, 6, 2, 7], {2}, 10) == [5, 6, 2]
    assert trim_new_tokens([5, 6, 7], {2}, 2) == [5, 6]


def _report(names_speedups, n=4):
    methods = []
    for name, speed in names_speedups:
        method = name.split(":")[0]
        methods.append(
            {
                "name": name,
                "method": method,
                "mean_accepted_tokens": speed,
                "speedup": speed,
                "acceptance_by_position": None if method == "target" else [0.8, 0.5],
                "tokens_per_s": 10 * speed,
                "identical": True,
                "mismatched_prompts": 0,
            }
        )
    return {
        "target": {"name_or_path": "t", "dtype": "torch.float32", "device": "cpu"},
        "settings": {"num_prompts": n, "max_new_tokens": 8, "torch": "x", "transformers": "y", "threads": 2},
        "methods": methods,
        "skipped": {},
    }


def test_render_and_merge(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_report([("target", 1.0), ("prompt_lookup", 0.9), ("selfspec:medusa", 1.5)])))
    b.write_text(json.dumps(_report([("target", 1.0), ("selfspec:eagle", 2.0)], n=3)))
    merged = merge_reports([a, b])
    assert [m["name"] for m in merged["methods"]] == [
        "target",
        "prompt_lookup",
        "selfspec:medusa",
        "selfspec:eagle",
    ]
    assert merged["settings"]["num_prompts"] == 3
    md = render_markdown(merged)
    assert "| selfspec eagle | 2.00 | 0.80 | 0.50 | n/a |" in md
    with pytest.raises(SelfspecError, match="does not exist"):
        merge_reports([tmp_path / "missing.json"])


def test_rates_from_few_rounds_are_marked(tmp_path):
    from selfspec.decode.bench.render import MIN_ROUNDS, plot_acceptance

    report = _report([("target", 1.0), ("selfspec:eagle", 1.6)])
    report["methods"][1]["drafted_by_position"] = [MIN_ROUNDS * 5, MIN_ROUNDS - 1]
    md = render_markdown(report)
    assert "| selfspec eagle | 1.60 | 0.80 | (0.50) | n/a |" in md
    assert f"fewer than {MIN_ROUNDS} rounds" in md
    plot_acceptance(report, tmp_path / "acceptance.png")
    assert (tmp_path / "acceptance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
