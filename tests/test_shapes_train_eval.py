"""The training and evaluation scripts of the bundled model: configs, determinism, a tiny end-to-end run."""

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
pytest.importorskip("diffusers", reason="training needs diffusers (pip install '.[diffusion]')")

import eval_shapes_model as ev  # noqa: E402
import train_shapes_model as tr  # noqa: E402


def test_train_config_validates_and_round_trips():
    cfg = tr.TrainConfig()
    assert tr.TrainConfig(**cfg.to_dict()) == cfg
    json.dumps(cfg.to_dict())
    for bad in (dict(batch_size=0), dict(empty_prompt_fraction=1.0), dict(ema_decay=1.0), dict(max_steps=0),
                dict(learning_rate=0.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            tr.TrainConfig(**bad)


def test_learning_rate_warms_up_holds_then_decays():
    cfg = tr.TrainConfig(max_steps=1000, warmup_steps=100, time_budget_minutes=1e9)
    lrs = [tr.lr_at(s, cfg) for s in range(1000)]
    assert lrs[0] < lrs[99] == cfg.learning_rate == lrs[500]
    assert lrs[-1] == pytest.approx(0.1 * cfg.learning_rate, rel=0.02)
    # A run cut by its time budget decays too.
    timed = dataclasses.replace(cfg, time_budget_minutes=1.0)
    assert tr.lr_at(200, timed, elapsed_s=60.0) == pytest.approx(0.1 * cfg.learning_rate)


def test_training_batches_are_a_pure_function_of_the_step():
    cfg = tr.TrainConfig(batch_size=16)
    (x1, p1), (x2, p2), (x3, _) = tr.batch_at(5, cfg), tr.batch_at(5, cfg), tr.batch_at(6, cfg)
    assert torch.equal(x1, x2) and p1 == p2 and not torch.equal(x1, x3)
    assert x1.shape == (16, 3, 32, 32) and x1.min() >= -1 and x1.max() <= 1
    many = [p for s in range(40) for p in tr.batch_at(s, cfg)[1]]
    assert 0.03 < many.count("") / len(many) < 0.2  # about 10% empty prompts for CFG


def test_eval_config_validates():
    assert ev.EvalConfig(**ev.EvalConfig().to_dict()) == ev.EvalConfig()
    with pytest.raises(ValueError, match="splits"):
        ev.EvalConfig(splits=("single/test",))
    with pytest.raises(ValueError, match="n_prompts"):
        ev.EvalConfig(n_prompts=0)


@pytest.mark.slow
def test_quick_training_run_writes_weights_and_loss_log(tmp_path):
    cfg = dataclasses.replace(tr.TrainConfig.quick_config(), max_steps=3, batch_size=4,
                              run_dir=str(tmp_path / "run"), loss_log=str(tmp_path / "loss.csv"))
    out = tr.train(cfg, install=False)
    assert out["steps"] == 3
    weights = tmp_path / "run" / "weights"
    assert (weights / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((weights / "training.json").read_text())["steps"] == 3
    assert (tmp_path / "loss.csv").is_file() and (tmp_path / "loss.meta.json").is_file()


def test_noise_and_timesteps_are_a_pure_function_of_the_step():
    cfg = tr.TrainConfig(batch_size=8, high_noise_fraction=0.5)
    (n1, t1), (n2, t2) = tr.noise_at(3, cfg, (8, 3, 32, 32)), tr.noise_at(3, cfg, (8, 3, 32, 32))
    assert torch.equal(n1, n2) and torch.equal(t1, t2)
    assert not torch.equal(n1, tr.noise_at(4, cfg, (8, 3, 32, 32))[0])
    assert (t1[:4] >= cfg.high_noise_from).all() and (t1 < tr.N_TRAIN_TIMESTEPS).all()


def test_train_config_rejects_bad_device_and_workers():
    with pytest.raises(ValueError, match="workers"):
        tr.TrainConfig(workers=-1)
    with pytest.raises(ValueError, match="device"):
        tr.TrainConfig(device="tpu")


@pytest.mark.slow
def test_worker_processes_change_the_speed_not_the_run(tmp_path):
    """Scenes drawn in worker processes give bit-identical weights to scenes drawn in the training process."""
    from safetensors.torch import load_file

    weights = []
    for workers in (0, 2):
        cfg = dataclasses.replace(tr.TrainConfig.quick_config(), max_steps=3, batch_size=4, device="cpu",
                                  workers=workers, run_dir=str(tmp_path / f"run{workers}"),
                                  loss_log=str(tmp_path / f"loss{workers}.csv"))
        tr.train(cfg, install=False)
        weights.append(load_file(tmp_path / f"run{workers}" / "weights" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
