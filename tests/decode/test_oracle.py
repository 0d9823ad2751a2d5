"""The oracle drafter (decode/bench/oracle.py): its chains are accepted whole in fp32, and its efficiency is
measured against the cost curve at the tokens each step really got."""

from __future__ import annotations

import math

import pytest
import torch

from selfspec.decode.bench import oracle


@pytest.mark.parametrize("depth", [2, 4])
def test_oracle_chain_is_accepted_whole_and_priced_by_the_cost_curve(
    tiny_target, tmp_path, monkeypatch, depth
):
    monkeypatch.setenv("SELFSPEC_HOME", str(tmp_path))  # the cost curve is measured and cached there
    model, _ = tiny_target
    max_new = 19
    prompts = [[5, 9, 14, 3, 22, 7], [40, 41, 2, 8]]
    with torch.inference_mode():
        rows = {r["name"]: r for r in oracle.run(model, prompts, max_new, [depth], tree_nodes=0)}
    row = rows[f"chain depth {depth}"]
    # the prefill gives one token, then every step accepts the whole chain plus the bonus (fp32: exact)
    assert row["steps"] == len(prompts) * math.ceil((max_new - 1) / (depth + 1))
    assert row["tokens"] == len(prompts) * max_new
    assert row["nodes"] == depth + 1
    assert row["efficiency"] == pytest.approx(row["tok_s"] / row["ideal_tok_s"])
    # the ideal at the measured tokens per step never exceeds the one at D + 1 (the last step is cut)
    assert row["ideal_speedup"] <= row["full_speedup"]
    assert row["efficiency"] >= row["full_efficiency"]
    assert "| of that |" in oracle.render(list(rows.values()), "header")
