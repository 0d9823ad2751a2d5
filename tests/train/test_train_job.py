"""End-to-end training on the tiny target: every family trains, exports and reloads; resume; bad input.

About 2-3 minutes on 2 cores (the subprocess and torchrun runs dominate).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from selfspec.heads import load_drafter, target_forward
from selfspec.heads.format_import import import_drafter
from selfspec.train import checkpoints, losses
from selfspec.utils import SelfspecError

from .conftest import REPO, TINY, compose, run_cli


def _same_outputs(trained, folder, target, loss_cfg) -> None:
    """The reloaded drafter gives the trained drafter's per-head losses and agreement, exactly."""
    reloaded = load_drafter(folder, target=target)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (2, 20), generator=g)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        t = target_forward(target, ids, layers=trained.feature_layers())
        fn = losses.LOSSES[trained.drafter_type]
        a = fn(trained.eval(), ids, mask, t.logits, t.hidden, loss_cfg)
        b = fn(reloaded.eval(), ids, mask, t.logits, t.hidden, loss_cfg)
    torch.testing.assert_close(a.per_head, b.per_head)
    torch.testing.assert_close(a.correct, b.correct)


@pytest.mark.parametrize("experiment", ["eagle", "eagle3", "draft", "dflash"])
def test_family_trains_exports_and_reloads(experiment, tmp_path, data_cache, tiny_target):
    from selfspec.train.run import train_job

    cfg = compose(
        [
            f"+experiment={experiment}",
            *TINY,
            "train.max_steps=3",
            f"data.cache_dir={data_cache}",
            f"output_dir={tmp_path}",
            "head.ttt_steps=3" if experiment == "eagle3" else "seed=0",
            *(["head.num_layers=1", "head.block_size=4"] if experiment == "dflash" else []),
        ]
    )
    result = train_job(cfg)
    assert (result.folder / "config.json").is_file()
    weights = "model.safetensors"
    assert (result.folder / weights).is_file()
    assert (result.folder / "README.md").is_file()
    assert "dataset_dir" in (result.folder / "train_config.yaml").read_text()
    assert len(result.history) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in result.history)
    assert 0.0 <= result.metrics["eval/loss"] < float("inf")
    untrained = {k for k in result.metrics if k.startswith("eval_untrained/top1")}
    assert untrained and {k.replace("eval_untrained/", "eval/") for k in untrained} <= set(result.metrics)
    _same_outputs(result.drafter, result.folder, tiny_target[0], cfg.train.loss)
    if experiment == "eagle3":
        _init_from(result, cfg, tiny_target)


def _init_from(result, cfg, tiny_target) -> None:
    """train.init_from: a fresh head (another draft vocabulary) takes the folder's weights and vocabulary, in
    its own dtype; a head of other sizes is refused in one line."""
    from selfspec.heads import build_drafter
    from selfspec.train.run import init_weights

    target, tok = tiny_target
    vocab = target.get_output_embeddings().weight.shape[0]
    fresh = build_drafter(cfg.head, target, token_counts=torch.arange(vocab).float(), dtype=torch.float32)
    init_weights(fresh, str(result.folder), target, tok)
    saved = load_drafter(result.folder).state_dict()
    ours = fresh.state_dict()
    assert saved.keys() == ours.keys()
    for k, v in saved.items():
        assert torch.equal(ours[k], v.to(ours[k].dtype)), k
    assert fresh.t2d.dtype == torch.bool and fresh.fc.weight.dtype == torch.float32
    other = build_drafter({**cfg.head, "draft_vocab_size": 64}, target, dtype=torch.float32)
    with pytest.raises(SelfspecError, match="do not fit this eagle3 head") as err:
        init_weights(other, str(result.folder), target, tok)
    assert "\n" not in str(err.value)


@pytest.mark.timeout(600)
def test_cli_medusa_with_launcher_arg(tmp_path, data_cache, tiny_target):
    """The done-when command, plus the ``--local_rank=0`` the deepspeed launcher appends."""
    proc = run_cli(
        [
            "+experiment=medusa",
            *TINY,
            "train.max_steps=3",
            f"data.cache_dir={data_cache}",
            f"output_dir={tmp_path}",
            "--local_rank=0",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "drafter"
    meta = json.loads((folder / "config.json").read_text())["selfspec"]
    assert meta["drafter_type"] == "medusa"
    drafter = load_drafter(folder, target=tiny_target[0])
    hidden = torch.randn(1, 5, drafter.config.hidden_size)
    torch.testing.assert_close(drafter(hidden), load_drafter(folder, target=tiny_target[0])(hidden))

    # The export CLI writes the FasterDecoding layout, which reads back as the same heads.
    out = tmp_path / "medusa-fd"
    proc = run_cli([f"drafter={folder}", "format=medusa", f"output_dir={out}"], script="export.py")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "medusa_lm_head.safetensors").is_file()
    imported = import_drafter(out, target=tiny_target[0])
    torch.testing.assert_close(imported(hidden), drafter(hidden))
    bad = run_cli([f"drafter={folder}", "format=onnx", f"output_dir={tmp_path / 'x'}"], script="export.py")
    output = bad.stdout + bad.stderr  # Hydra's logging goes to stdout
    errors = [ln for ln in output.splitlines() if "ERROR" in ln]
    assert bad.returncode == 1 and len(errors) == 1 and "unknown export format 'onnx'" in errors[0], output
    assert "Traceback" not in output and not (tmp_path / "x").exists()
    assert not (REPO / "export.log").exists()  # the export CLI logs to the console, not into the cwd
    assert (tmp_path / "checkpoints" / "step_0000003" / "selfspec.json").is_file()


def test_keep_last_and_resume_never(tmp_path, data_cache):
    """``keep_last`` keeps the newest N checkpoints; ``resume=never`` starts over and drops the old run's."""
    from selfspec.train.run import train_job

    common = [
        "+experiment=medusa",
        *TINY,
        "train.save_every=1",
        "train.keep_last=2",
        "train.eval_every=0",
        f"data.cache_dir={data_cache}",
        f"output_dir={tmp_path}",
    ]
    train_job(compose([*common, "train.max_steps=4"]))
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_0000003", "step_0000004"]
    assert (ckpts / "latest").read_text() == "step_0000004"  # still written, for DeepSpeed's tools
    again = train_job(compose([*common, "train.max_steps=2", "train.resume=never"]))
    assert [r["step"] for r in again.history] == [1, 2]
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_0000001", "step_0000002"]
    assert checkpoints.latest_tag(ckpts) == "step_0000002"
    logged = [json.loads(ln)["step"] for ln in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert logged == [1, 2]  # the old run's rows are gone, not followed by a second step 1


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data_cache, monkeypatch):
    from selfspec.train.run import train_job

    real, calls = losses.LOSSES["medusa"], {"n": 0}

    def nan_at_third(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setitem(losses.LOSSES, "medusa", nan_at_third)
    cfg = compose(
        [
            "+experiment=medusa",
            *TINY,
            "train.max_steps=5",
            "train.save_every=2",
            "train.eval_every=0",
            f"data.cache_dir={data_cache}",
            f"output_dir={tmp_path}",
        ]
    )
    with pytest.raises(SelfspecError, match="at step 3") as err:
        train_job(cfg)
    assert "step_0000002" in str(err.value) and "\n" not in str(err.value)
    assert checkpoints.latest_tag(tmp_path / "checkpoints") == "step_0000002"


class _InfGrad(torch.autograd.Function):
    """Identity forward, infinite gradient backward: a finite loss whose gradients are not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


def _guard_cfg(tmp_path, data_cache, *extra):
    return compose(
        [
            "+experiment=medusa",
            *TINY,
            "train.max_steps=5",
            "train.save_every=2",
            "train.eval_every=0",
            f"data.cache_dir={data_cache}",
            f"output_dir={tmp_path}",
            *extra,
        ]
    )


def _finite_checkpoint(ckpt: Path) -> bool:
    state = torch.load(ckpt / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize("zero", ["zero0", "zero2"])
def test_infinite_gradients_with_a_finite_loss_stop_the_run(zero, tmp_path, data_cache, monkeypatch):
    """ZeRO-0 checks the gradients before its step; ZeRO-2 skips the step itself and reports the norm."""
    from selfspec.train.run import train_job

    real, calls = losses.LOSSES["medusa"], {"n": 0}

    def inf_grad_at_third(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            out.loss = _InfGrad.apply(out.loss)
        return out

    monkeypatch.setitem(losses.LOSSES, "medusa", inf_grad_at_third)
    with pytest.raises(SelfspecError, match="non-finite gradient.* at step 3") as err:
        train_job(_guard_cfg(tmp_path, data_cache, f"deepspeed={zero}"))
    assert "step_0000002" in str(err.value) and "\n" not in str(err.value)
    ckpts = tmp_path / "checkpoints"
    assert checkpoints.latest_tag(ckpts) == "step_0000002" and not (ckpts / "step_0000004").exists()
    if zero == "zero0":
        assert _finite_checkpoint(ckpts / "step_0000002")


def test_non_finite_weights_are_never_checkpointed(tmp_path, data_cache, monkeypatch):
    """Whatever slipped past the loss and gradient guards, a checkpoint of NaN weights is refused."""
    from selfspec.train.loop import Trainer
    from selfspec.train.run import train_job

    real, calls = Trainer._optimizer_step, {"n": 0}

    def poison_fourth(self):
        real(self)
        calls["n"] += 1
        if calls["n"] == 4:
            with torch.no_grad():
                next(self.engine.module.parameters()).fill_(float("nan"))

    monkeypatch.setattr(Trainer, "_optimizer_step", poison_fourth)
    with pytest.raises(
        SelfspecError, match="refusing to checkpoint step 4: the drafter's weights are not finite"
    ):
        train_job(_guard_cfg(tmp_path, data_cache))
    assert checkpoints.latest_tag(tmp_path / "checkpoints") == "step_0000002"
    assert not (tmp_path / "checkpoints" / "step_0000004").exists()


def test_checkpoint_of_another_drafter_type_is_refused(tmp_path, data_cache):
    from selfspec.train.run import train_job

    common = [
        *TINY,
        "train.max_steps=1",
        "train.save_every=1",
        f"data.cache_dir={data_cache}",
        f"output_dir={tmp_path}",
    ]
    train_job(compose(["+experiment=medusa", *common]))
    with pytest.raises(
        SelfspecError, match="holds a 'medusa' drafter checkpoint but this run trains 'eagle'"
    ):
        train_job(compose(["+experiment=eagle", *common]))


@pytest.mark.timeout(330)
def test_unknown_drafter_type_is_one_clear_line(tmp_path):
    proc = run_cli(["+experiment=medusa", "head.type=nosuch", "target=tiny_random", f"output_dir={tmp_path}"])
    assert proc.returncode == 1
    output = proc.stdout + proc.stderr  # Hydra's logging goes to stdout
    errors = [ln for ln in output.splitlines() if "ERROR" in ln]
    assert len(errors) == 1 and "unknown drafter type 'nosuch'" in errors[0], output[-2000:]
    assert "Traceback" not in output


@pytest.mark.timeout(300)
def test_torchrun_two_ranks_zero3_exports(tmp_path, data_cache, tiny_target):
    """``torchrun --nproc_per_node 2`` on the CPU (gloo), ZeRO-3: the weights are gathered for the export."""
    import socket
    import sys

    with socket.socket() as s:  # torchrun's static rendezvous needs a real port (0 hangs)
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    proc = run_cli(
        [
            "+experiment=eagle3",
            *TINY,
            "deepspeed=zero3",
            "train.max_steps=2",
            "head.ttt_steps=2",
            f"data.cache_dir={data_cache}",
            f"output_dir={tmp_path}",
        ],
        launcher=launcher,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "drafter"
    drafter = load_drafter(folder, target=tiny_target[0])
    assert drafter.drafter_type == "eagle3"
    assert all(p.numel() > 0 for p in drafter.parameters())
