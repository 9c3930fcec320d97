"""NaN/inf: training stops within one step (loss, gradient, or the weights after the optimizer step),
names the stage and the step, keeps the last good checkpoint, writes nothing non-finite, and says only
what is true about checkpoints."""
import json

import pytest
import torch

import runhelpers as H
from tinyrlhf.cli import main
from tinyrlhf.config import load_config
from tinyrlhf.train import engine, sft
from tinyrlhf.train.guard import TrainingDiverged
from tinyrlhf.train.sft import run_sft


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return H.integrity_env(tmp_path_factory)


args, cfg, one_line_error = H.args, H.cfg, H.one_line_error


def _all_finite(state_pt) -> bool:
    state = torch.load(state_pt, weights_only=False)
    return all(torch.isfinite(t).all() for t in state["modules"]["model"].values() if t.is_floating_point())


def test_nan_loss_stops_within_the_step_and_keeps_the_last_good_checkpoint(env, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real, calls = sft.token_logps, []

    def poisoned(*a, **k):
        calls.append(1)
        lp = real(*a, **k)
        return lp * float("nan") if len(calls) == 3 else lp
    monkeypatch.setattr(sft, "token_logps", poisoned)
    with pytest.raises(TrainingDiverged) as e:
        run_sft(cfg(env, out))
    assert str(e.value).startswith("sft: the loss became nan at step 3; the last good checkpoint (step 2)")
    assert json.load(open(out / "checkpoints" / "last" / "manifest.json"))["step"] == 2
    assert _all_finite(out / "checkpoints" / "last" / "state.pt")
    assert not any((out / n).exists() for n in ("final", ".final.partial", "summary.json"))


def _poison_weights_at(module, monkeypatch, at_step: int):
    """Make the optimizer write NaN into one weight on its `at_step`-th step (loss and gradient stay finite)."""
    real = module.build_optimizer

    def build(*a, **k):
        opt = real(*a, **k)
        count = []

        def hook(optimizer, args, kwargs):
            count.append(1)
            if len(count) == at_step:
                optimizer.param_groups[0]["params"][0].data.view(-1)[0] = float("nan")
        opt.register_step_post_hook(hook)
        return opt
    monkeypatch.setattr(module, "build_optimizer", build)


def test_nonfinite_weights_after_the_step_are_caught(env, tmp_path, monkeypatch):
    """guard.check_weights: the loss and gradient of step 3 are finite but the update is not; the run stops
    at step 3, and the checkpoint kept (step 2) is finite. Without the check step 3 would be saved."""
    out = tmp_path / "run"
    _poison_weights_at(engine, monkeypatch, 3)
    with pytest.raises(TrainingDiverged, match=r"^sft: the weights \(after the optimizer step\) became NaN/inf "
                                               r"at step 3; the last good checkpoint \(step 2\)"):
        run_sft(cfg(env, out))
    assert json.load(open(out / "checkpoints" / "last" / "manifest.json"))["step"] == 2
    assert _all_finite(out / "checkpoints" / "last" / "state.pt") and not (out / "final").exists()


def test_nan_before_any_checkpoint_promises_none(env, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _poison_weights_at(engine, monkeypatch, 1)
    capsys.readouterr()
    assert main(args(env, out, "train.save_every=0")) == 2
    err = one_line_error(capsys)
    assert "at step 1; no checkpoint had been written yet" in err and "kept in" not in err
    assert not (out / "checkpoints").exists() and not (out / "final").exists()


def test_infinite_lr_writes_nothing_non_finite(env, tmp_path, capsys):
    """train.lr=inf (refused by validation, or stopped at step 1 by the weight check): exit 2, no final/."""
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(args(env, out, "train.lr=inf")) == 2
    one_line_error(capsys)
    assert not (out / "final").exists() and not (out / "checkpoints" / "last").exists()


def test_ppo_stops_on_nonfinite_weights(env, tmp_path, monkeypatch):
    """online.step_optimizer checks the weights too; the message names the stage and the step."""
    from tinyrlhf.train import online
    from tinyrlhf.train.ppo import run_ppo
    out = tmp_path / "ppo"
    _poison_weights_at(online, monkeypatch, 3)  # 2 optimizer steps per PPO step: the 3rd is in step 2
    c = H.ppo_cfg(env, out)
    with pytest.raises(TrainingDiverged, match=r"^ppo: the weights .* at step 2; the last good checkpoint "
                                               r"\(step 1\)"):
        run_ppo(c)
    state = torch.load(out / "checkpoints" / "last" / "state.pt", weights_only=False)
    assert state["step"] == 1 and all(torch.isfinite(t).all() for t in state["modules"]["policy"].values()
                                      if t.is_floating_point())
    assert not (out / "final").exists()
