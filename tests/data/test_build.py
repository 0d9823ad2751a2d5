"""build_dataset on the tiny target: token layout vs the chat template, cache reuse, splits, bad input."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

from selfspec.data import build_dataset, load_splits
from selfspec.data.builder import _wait_for, dataset_dir, dataset_meta
from selfspec.utils import SelfspecError
from tests.data.conftest import compose, write_jsonl


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's byte -> printable-char map that byte-level tokenizers use."""
    bs = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    )
    cs, n = list(bs), 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _raw(tok, ids: list[int]) -> bytes:
    dec, special = _byte_decoder(), set(tok.all_special_tokens)
    return b"".join(
        t.encode() if t in special else bytes(dec[c] for c in t) for t in tok.convert_ids_to_tokens(ids)
    )


def _build(tiny_target, tmp_path, *overrides):
    cfg = compose(
        [
            "target=tiny_random",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.max_new_tokens=8",
            "data.batch_size=4",
            *overrides,
        ]
    )
    return build_dataset(cfg, *tiny_target)


def test_two_turn_loss_mask_matches_chat_template(tiny_target, tmp_path):
    _, tok = tiny_target
    user = ["Hello there, who are you?", "And what can you do?"]
    conv = {
        "messages": [
            {"role": "user", "content": user[0]},
            {"role": "assistant", "content": "(old)"},
            {"role": "user", "content": user[1]},
        ]
    }
    path = write_jsonl(tmp_path / "two.jsonl", [conv])
    out = _build(tiny_target, tmp_path, "data.source=jsonl", f"data.path={path}", "data.eval_fraction=0")
    row = load_splits(out)["train"][0]
    ids, mask = row["input_ids"], row["loss_mask"]
    runs = []  # maximal spans of generated tokens
    for j, m in enumerate(mask):
        if m and (j == 0 or not mask[j - 1]):
            runs.append([j, j + 1])
        elif m:
            runs[-1][1] = j + 1
    assert len(runs) == 2 and runs[0][0] == row["prompt_len"]
    eot = tok.eos_token_id
    responses = [ids[a:b] for a, b in runs]
    # Expected bytes: the template rendered with the target's answers in place, eot included when generated.
    slots = [f"\x00R{k}\x00" for k in range(2)]
    text = tok.apply_chat_template(
        [
            {"role": "user", "content": user[0]},
            {"role": "assistant", "content": slots[0]},
            {"role": "user", "content": user[1]},
            {"role": "assistant", "content": slots[1]},
        ],
        tokenize=False,
    ).encode()
    expected_mask_bytes = []
    for slot, resp in zip(slots, responses, strict=True):
        body = resp[:-1] if resp[-1] == eot else resp
        text = text.replace(slot.encode(), _raw(tok, body))
        expected_mask_bytes.append(_raw(tok, resp))
    raw = _raw(tok, ids)
    assert text.startswith(raw) and text[len(raw) :] in (b"\n", b"<|im_end|>\n")
    # Token by token: the first prompt is exactly the template's generation prompt; masked tokens are the answers.
    first = tok.apply_chat_template(
        [{"role": "user", "content": user[0]}], add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    assert ids[: row["prompt_len"]] == list(first)
    assert [_raw(tok, ids[a:b]) for a, b in runs] == expected_mask_bytes
    assert sum(mask) == sum(len(r) for r in responses)


def test_reuse_and_rebuild(tiny_target, tmp_path, chat_file):
    args = ("data.source=jsonl", f"data.path={chat_file}", "data.num_prompts=4")
    first = _build(tiny_target, tmp_path, *args)
    marker = first.parent / "COMPLETE"
    stamp = marker.stat().st_mtime_ns
    assert _build(tiny_target, tmp_path, *args, "data.batch_size=2") == first  # throughput knobs: same data
    assert marker.stat().st_mtime_ns == stamp
    changed = _build(tiny_target, tmp_path, *args, "data.max_new_tokens=6")
    assert changed != first and (changed.parent / "COMPLETE").exists()
    meta = json.loads((changed.parent / "meta.json").read_text())
    assert meta["data"]["max_new_tokens"] == 6 and meta["target"] == "tiny-random"
    assert {"weights_fingerprint", "tokenizer_fingerprint", "seed", "num_samples"} <= meta.keys()


def test_eval_prompts_never_in_train(tiny_target, tmp_path, chat_file):
    out = _build(
        tiny_target,
        tmp_path,
        "data.source=jsonl",
        f"data.path={chat_file}",
        "data.eval_fraction=0.25",
        "data.shard_size=5",
    )
    splits = load_splits(out.parent)
    train, ev = set(splits["train"]["prompt_index"]), set(splits["eval"]["prompt_index"])
    assert len(ev) == 3 and not train & ev and train | ev == set(range(12))
    prompts = json.loads((out.parent / "prompts.json").read_text())["conversations"]
    assert {prompts[i][0]["content"] for i in ev}.isdisjoint({prompts[i][0]["content"] for i in train})
    for split in splits.values():
        for r in split:
            assert len(r["input_ids"]) == len(r["loss_mask"]) and 0 < r["prompt_len"] < len(r["input_ids"])
            assert set(r["loss_mask"][: r["prompt_len"]]) == {0}


def test_prompts_longer_than_context(tiny_target, tmp_path):
    ctx = tiny_target[0].config.max_position_embeddings
    path = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "x" * ctx}, {"prompt": "short one"}])
    out = _build(tiny_target, tmp_path, "data.source=jsonl", f"data.path={path}", "data.eval_fraction=0")
    meta = json.loads((out.parent / "meta.json").read_text())
    assert meta["skipped"] == {"prompt longer than the context": 1} and meta["num_samples"]["train"] == 1
    only_long = write_jsonl(tmp_path / "only_long.jsonl", [{"prompt": "x" * ctx}])
    with pytest.raises(SelfspecError, match="no usable conversation.*longer than the context"):
        _build(tiny_target, tmp_path, "data.source=jsonl", f"data.path={only_long}")


def test_self_prompts_impossible_is_an_error(tiny_target, tmp_path):
    with pytest.raises(SelfspecError, match="usable prompts"):
        _build(
            tiny_target,
            tmp_path,
            "data.num_prompts=2",
            "data.magpie.max_tokens=4",
            "data.magpie.relax_on_shortfall=false",
        )


@pytest.mark.parametrize("rank", [0, 1])
def test_ranks_without_a_shared_cache_fail_within_the_timeout(
    rank, tiny_target, tmp_path, monkeypatch, chat_file
):
    """One rank of two alone with its cache (a node-local default): rank 1 never sees rank 0's plan, rank 0
    never sees rank 1's shards. Either way one clear line after data.wait_timeout_s, not a hang."""
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", "2")
    start = time.monotonic()
    with pytest.raises(SelfspecError, match="set data.cache_dir to a folder every rank") as err:
        _build(
            tiny_target,
            tmp_path,
            "data.source=jsonl",
            f"data.path={chat_file}",
            "data.num_prompts=2",
            "data.shard_size=1",
            "data.wait_timeout_s=2",
        )
    assert f"without any sign of rank {1 - rank}" in str(err.value) and "\n" not in str(err.value)
    assert time.monotonic() - start < 60


def test_a_slow_peer_is_waited_for_as_long_as_it_beats(tmp_path):
    """A peer that keeps its heartbeat going is waited for past the timeout."""
    work, done = tmp_path / "work", tmp_path / "work" / "COMPLETE"
    (work / ".alive").mkdir(parents=True)

    def peer() -> None:
        for n in range(12):
            (work / ".alive" / "0").write_text(str(n))
            time.sleep(0.25)
        done.write_text("ok")

    thread = threading.Thread(target=peer)
    thread.start()
    start = time.monotonic()
    _wait_for(done, "the peer", work, 0, timeout_s=1.0)
    thread.join()
    assert time.monotonic() - start > 2.0  # well past the timeout, without an error


def test_batching_knobs_are_in_the_key_when_something_is_sampled(tiny_target, tmp_path, chat_file):
    def key(*overrides: str):
        cfg = compose(["target=tiny_random", f"data.cache_dir={tmp_path}", *overrides])
        return dataset_dir(cfg, dataset_meta(cfg, *tiny_target))

    greedy = ("data.source=jsonl", f"data.path={chat_file}")
    assert key(*greedy, "data.batch_size=2", "data.shard_size=2") == key(*greedy, "data.batch_size=4")
    hot = (*greedy, "data.temperature=0.7")
    assert key(*hot, "data.batch_size=2") != key(*hot, "data.batch_size=4")
    assert key(*hot, "data.shard_size=2") != key(*hot, "data.shard_size=4")
    assert key("data.batch_size=2") != key("data.batch_size=4")  # source=self: Magpie samples the prompts
    assert key("data.shard_size=2") == key("data.shard_size=4") == key("data.wait_timeout_s=5")


def test_magpie_prompts_depend_on_the_batch_size(tiny_target):
    """Why batch_size is in the key of a source=self dataset: one seeded stream, drawn slot by slot."""
    from selfspec.data.config import MagpieConf
    from selfspec.data.engine_hf import HFEngine
    from selfspec.data.magpie import self_prompts
    from selfspec.data.rollout import pad_id, stop_token_ids

    model, tok = tiny_target

    def prompts(batch_size: int) -> list[str]:
        torch.manual_seed(0)
        engine = HFEngine(model, stop_token_ids(model, tok), pad_id(tok), slots=batch_size)
        return self_prompts(model, tok, 4, MagpieConf(max_tokens=8, max_attempts_factor=1), engine)[0]

    assert prompts(1) != prompts(4)


def test_one_prompt_with_a_large_eval_fraction_stays_in_train(tiny_target, tmp_path):
    path = write_jsonl(tmp_path / "one.jsonl", [{"prompt": "just this one"}])
    out = _build(tiny_target, tmp_path, "data.source=jsonl", f"data.path={path}", "data.eval_fraction=0.6")
    splits = load_splits(out)
    assert len(splits["train"]) == 1 and len(splits["eval"]) == 0


class _Scripted:
    """An engine whose candidates are fixed texts, in turn, each ending its turn."""

    def __init__(self, tok, texts: list[str]) -> None:
        self.ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        self.n = 0

    def generate(self, batch, max_tokens, temperature, top_p, stop_ids):
        for _ in batch:
            self.n += 1
            yield self.ids[(self.n - 1) % len(self.ids)], True


def test_magpie_avoids_the_prompts_of_earlier_datasets(tiny_target, tmp_path):
    """data.magpie.avoid: near duplicates of an earlier dataset's prompts are rejected, and that dataset's
    folder is part of the new key (an empty list keeps the keys of datasets made before the option)."""
    from selfspec.data.config import MagpieConf
    from selfspec.data.magpie import self_prompts

    model, tok = tiny_target
    texts = [
        "Write a short poem about the sea at night.",
        "How do I reverse a list in Python without a loop?",
        "What is the boiling point of water on a high mountain?",
    ]
    cfg = MagpieConf(max_attempts_factor=2, relax_on_shortfall=False)
    old = ["write a short poem about the sea at night"]
    kept, rejected = self_prompts(model, tok, 2, cfg, _Scripted(tok, texts), avoid=old)
    assert kept == texts[1:] and rejected["near duplicate"] >= 1
    assert self_prompts(model, tok, 2, cfg, _Scripted(tok, texts))[0] == texts[:2]

    earlier = _build(
        tiny_target,
        tmp_path,
        "data.source=jsonl",
        f"data.path={write_jsonl(tmp_path / 'a.jsonl', [{'prompt': 'hi there'}])}",
    )

    def key(*overrides: str):
        cfg = compose(["target=tiny_random", f"data.cache_dir={tmp_path / 'cache'}", *overrides])
        return dataset_dir(cfg, dataset_meta(cfg, *tiny_target))

    assert key() == key("data.magpie.avoid=[]")
    assert key(f"data.magpie.avoid=[{earlier.parent}]") != key()
    with pytest.raises(SelfspecError, match="not a dataset folder") as err:
        key(f"data.magpie.avoid=[{tmp_path / 'nowhere'}]")
    assert "\n" not in str(err.value)
