"""scripts/compare_bench.py: a rerun within noise passes, a real change in speed or outputs does not."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("compare_bench", REPO / "scripts" / "compare_bench.py")
compare_bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_bench)


def _report(target_times: list[float], method_times: list[float], identical: bool = True) -> dict:
    def row(name, times, forwards):
        per = [{"new_tokens": 64, "target_forwards": forwards, "wall_time_s": t} for t in times]
        speedup = sum(target_times) / sum(times)
        return {
            "name": name,
            "per_prompt": per,
            "speedup": speedup,
            "tokens_per_s": 64 * len(times) / sum(times),
            "identical": identical if name != "target" else True,
            "mean_accepted_tokens": 64 / forwards,
            "accepted_by_position": [10, 5] if name != "target" else [],
            "drafted_by_position": [20, 10] if name != "target" else [],
        }

    return {
        "created": "now",
        "methods": [row("target", target_times, 64), row("selfspec:medusa", method_times, 40)],
    }


def _run(tmp_path: Path, a: dict, b: dict) -> tuple[int, str]:
    pa, pb, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "rerun.md"
    pa.write_text(json.dumps(a)), pb.write_text(json.dumps(b))
    return compare_bench.main([str(pa), str(pb), "--out", str(out)]), out.read_text()


def test_rerun_within_noise_passes(tmp_path):
    a = _report([5.0, 5.5, 6.0, 5.2], [4.0, 4.6, 5.1, 4.0])
    b = _report([5.1, 5.4, 6.1, 5.0], [4.1, 4.4, 5.0, 4.2])
    rc, text = _run(tmp_path, a, b)
    assert rc == 0 and "everything within noise" in text
    assert "| selfspec:medusa | yes / yes | 1.60 / 1.60 | yes | yes |" in text


def test_slower_rerun_or_changed_output_fails(tmp_path):
    a = _report([5.0, 5.5, 6.0, 5.2], [4.0, 4.6, 5.1, 4.0])
    slow = _report([5.0, 5.5, 6.0, 5.2], [8.0, 9.1, 10.0, 8.3])
    rc, text = _run(tmp_path, a, slow)
    assert rc == 1 and "NOT within noise" in text
    rc, text = _run(tmp_path, a, _report([5.0, 5.5, 6.0, 5.2], [4.0, 4.6, 5.1, 4.0], identical=False))
    assert rc == 1 and "| yes / no |" in text


def test_a_method_missing_from_one_run_is_not_within_noise(tmp_path):
    a = _report([5.0, 5.5, 6.0, 5.2], [4.0, 4.6, 5.1, 4.0])
    b = _report([5.1, 5.4, 6.1, 5.0], [4.1, 4.4, 5.0, 4.2])
    b["methods"] = [m for m in b["methods"] if m["name"] != "selfspec:medusa"]
    rc, text = _run(tmp_path, a, b)
    assert rc == 1 and "NOT within noise" in text and "| selfspec:medusa | missing in B |" in text
    rc, text = _run(tmp_path, b, a)
    assert rc == 1 and "| selfspec:medusa | missing in A |" in text


def test_a_single_prompt_cannot_be_judged_within_noise(tmp_path):
    a, b = _report([5.0], [4.0]), _report([5.1], [9.0])
    rc, text = _run(tmp_path, a, b)
    assert rc == 1 and "NOT within noise" in text and "cannot tell (1 prompt)" in text
