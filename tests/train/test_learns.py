"""Training improves every drafter family on a learnable signal: the eval agreement the loop reports rises
above the untrained drafter's, and so do the tokens the decoder accepts from it, a measure that does not go
through the training loss's own alignment (a label shifted by one position would train a drafter the decoder
rejects, while lossless decoding would still pass).

The signal: the tiny target's greedy answers to 12 prompts, each listed twice, so the eval split (a quarter of
the conversations, by prompt index) asks again prompts the train split holds. The tiny random target's answers
are chaotic, so nothing generalises to unseen prompts in a few dozen steps; here what is measured is whether
training taught the drafter the target's continuations. About 5 s per family on 2 cores.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from selfspec.data import load_splits
from selfspec.decode import SpeculativeDecoder
from selfspec.heads import load_drafter
from selfspec.train import run as run_module

from .conftest import TINY, compose


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: faster, and the same numbers on a busy or an idle 2-core box
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def twice_asked(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("learn")
    records = [{"prompt": f"Request {i}: write something about the number {i * 7}."} for i in range(12)]
    path = root / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records + records))
    return [
        "data.source=jsonl",
        f"data.path={path}",
        "data.num_prompts=24",
        "data.max_new_tokens=32",
        "data.eval_fraction=0.25",
        f"data.cache_dir={root / 'cache'}",
    ]


def _accepted(target, drafter, eval_split) -> float:
    """Mean tokens per target forward when the decoder drafts with ``drafter`` on the eval prompts (the family's
    default tree, forced: on the tiny target the cost model may rightly decline to speculate at all)."""
    dec = SpeculativeDecoder(target, drafter, tree=True)
    values = []
    for row in eval_split:
        ids = torch.tensor([row["input_ids"][: row["prompt_len"]]])
        values.append(dec.generate(ids, max_new_tokens=32).stats.mean_accepted_tokens)
    return sum(values) / len(values)


FAMILIES = [
    # Medusa's heads start as the identity on the tiny target's very large hidden states: a larger step size.
    pytest.param("medusa", ["train.lr=0.1"], id="medusa"),
    pytest.param("eagle", ["train.lr=0.01"], id="eagle"),
    pytest.param("eagle3", ["train.lr=0.01", "head.ttt_steps=3"], id="eagle3"),
    pytest.param("draft", ["train.lr=0.01", "head.num_layers=1"], id="draft_model"),
]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("experiment", "extra"), FAMILIES)
def test_training_makes_the_drafter_agree_with_the_target(
    experiment, extra, twice_asked, tmp_path, tiny_target, monkeypatch
):
    initial: dict[str, torch.Tensor] = {}
    real_build = run_module.build_drafter

    def keep_initial(*args, **kwargs):
        drafter = real_build(*args, **kwargs)
        initial.update({k: v.detach().clone() for k, v in drafter.state_dict().items()})
        return drafter

    monkeypatch.setattr(run_module, "build_drafter", keep_initial)
    steps = 60
    cfg = compose(
        [
            f"+experiment={experiment}",
            *TINY,
            *twice_asked,
            f"train.max_steps={steps}",
            f"train.eval_every={steps}",  # the untrained baseline at step 0, the trained one at the end
            "train.eval_batches=0",  # the whole eval split
            "train.save_every=0",
            "train.warmup_steps=5",
            f"output_dir={tmp_path}",
            *extra,
        ]
    )
    result = run_module.train_job(cfg)
    label = "step" if experiment == "eagle3" else "head"
    before, after = result.metrics[f"eval_untrained/top1_{label}1"], result.metrics[f"eval/top1_{label}1"]
    assert after > before + 0.05, (before, after)

    target = tiny_target[0]
    eval_split = load_splits(_dataset_dir(result.folder))["eval"]
    trained = load_drafter(result.folder, target=target)
    untrained = load_drafter(result.folder, target=target)
    untrained.load_state_dict(initial)
    acc_before, acc_after = _accepted(target, untrained, eval_split), _accepted(target, trained, eval_split)
    assert acc_after > acc_before + 0.05, (acc_before, acc_after)


def _dataset_dir(folder) -> str:
    """The dataset a drafter folder was trained on (recorded in its train_config.yaml)."""
    return yaml.safe_load((folder / "train_config.yaml").read_text())["dataset_dir"]
