"""Train the bundled shapes text-to-image model (pixel-space UNet cross-attending to all-MiniLM-L6-v2).

    python experiments/train_shapes_model.py                       # full run (80 min budget; resumes from a checkpoint)
    # the bundled model's recipe, on a GPU (scripts/gpu_check.sh --train-minutes N --train-args "..." runs it there):
    python experiments/train_shapes_model.py --device cuda --workers 8 --batch-size 256 --learning-rate 8e-4 \
        --time-budget-minutes 3.5 --run-dir tmp/run1
    python experiments/train_shapes_model.py --device cuda --workers 8 --batch-size 512 --learning-rate 5e-4 \
        --time-budget-minutes 3 --init-from tmp/run1/weights --run-dir tmp/run2
    python experiments/train_shapes_model.py --quick               # a few steps, for CI
    python experiments/train_shapes_model.py --export-only         # copy the latest checkpoint's EMA weights into the package

Data are generated on the fly: step ``s`` uses scenes ``s·B … (s+1)·B − 1`` of the ``"mixed"`` training stream
(60% one object, 40% two objects; held-out colour–shape pairs never occur). Text contexts are cached per prompt
(the prompt set is finite). 10% of the prompts are replaced by the empty prompt so the model learns the
unconditional score that classifier-free guidance needs. Loss: v-prediction MSE on a cosine schedule (min-SNR-5
weighting optional), with half of each batch at high noise (t ≥ 400), where the layout (where objects go) is
decided. An EMA copy of the weights is kept and is what gets exported.

Every ``checkpoint_minutes`` the run writes ``<run_dir>/checkpoint.pt`` (model, EMA, optimiser, step, wall time:
a rerun resumes from it), exports the EMA weights (fp16 safetensors) to ``<run_dir>/weights`` and rewrites the
loss log ``results/shapes_train_loss.csv`` (+ ``.meta.json``). At the end the weights go to
``pladis_analysis/models/shapes/weights`` (unless ``--no-install``) with ``training.json`` and the model card.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pladis_analysis.models.shapes import dataset as ds  # noqa: E402
from pladis_analysis.models.shapes.model_card import write_model_card  # noqa: E402
from pladis_analysis.models.shapes.pipeline import (WEIGHTS_DIR, add_coordinate_channels, load_unet,  # noqa: E402
                                                    save_unet, scheduler_config, unet_config)
from pladis_analysis.models.shapes.text_encoder import PromptCache, load_text_encoder  # noqa: E402
from pladis_analysis.results import device_description, provenance, write_table  # noqa: E402

N_TRAIN_TIMESTEPS = scheduler_config()["num_train_timesteps"]


@dataclass
class TrainConfig:
    """Everything that determines a training run."""

    seed: int = 0
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention_heads: int = 4
    batch_size: int = 32
    learning_rate: float = 5e-4
    warmup_steps: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    max_steps: int = 30000
    time_budget_minutes: float = 80.0
    empty_prompt_fraction: float = 0.1
    min_snr_gamma: float = 5.0
    loss_weighting: str = "v"  # "v" (plain v-prediction MSE) or "min_snr" (min-SNR-γ for v)
    high_noise_fraction: float = 0.5  # share of each batch with t drawn from [high_noise_from, T) instead of [0, T)
    high_noise_from: int = 400
    ema_decay: float = 0.999
    checkpoint_minutes: float = 4.0
    log_every: int = 20
    threads: int = 2
    device: str = "auto"  # "auto": CUDA when available, else the CPU
    workers: int = 0  # data-generating processes (0: scenes are drawn in the training process)
    text_encoder: str | None = None  # model folder (e.g. an fp16 copy); None: the packaged all-MiniLM-L6-v2
    init_from: str | None = None  # weights folder to start from (a fresh run only): e.g. the bundled weights
    run_dir: str = "tmp/shapes_run"
    loss_log: str = "results/shapes_train_loss.csv"
    quick: bool = False

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(self.block_out_channels)
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size}: must be >= 1")
        if not 0 <= self.empty_prompt_fraction < 1:
            raise ValueError(f"empty_prompt_fraction={self.empty_prompt_fraction}: must be in [0, 1)")
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay={self.ema_decay}: must be in (0, 1)")
        if self.max_steps < 1:
            raise ValueError(f"max_steps={self.max_steps}: must be >= 1")
        if self.loss_weighting not in ("min_snr", "v"):
            raise ValueError(f"loss_weighting={self.loss_weighting!r}: expected 'min_snr' or 'v'")
        if not 0 <= self.high_noise_fraction <= 1:
            raise ValueError(f"high_noise_fraction={self.high_noise_fraction}: must be in [0, 1]")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate={self.learning_rate}: must be > 0")
        if self.workers < 0:
            raise ValueError(f"workers={self.workers}: must be >= 0")
        if self.device != "auto" and not self.device.startswith(("cpu", "cuda")):
            raise ValueError(f"device={self.device!r}: expected 'auto', 'cpu' or 'cuda[:N]'")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        return d

    @classmethod
    def quick_config(cls) -> "TrainConfig":
        return cls(max_steps=6, batch_size=8, warmup_steps=2, log_every=2, checkpoint_minutes=0.0,
                   run_dir="tmp/shapes_run_quick", loss_log="tmp/shapes_run_quick/loss.csv", quick=True)


def lr_at(step: int, cfg: TrainConfig, elapsed_s: float = 0.0) -> float:
    """Linear warm-up, constant, then a cosine down to 10% over the last 25% of the run.

    Progress is the larger of ``step / max_steps`` and ``elapsed / time budget``, so a run cut short by its
    time budget still ends on a decayed learning rate.
    """
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = max(step / cfg.max_steps, elapsed_s / (cfg.time_budget_minutes * 60))
    if progress < 0.75:
        return cfg.learning_rate
    frac = min(1.0, (progress - 0.75) / 0.25)
    return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def batch_at(step: int, cfg: TrainConfig) -> tuple[torch.Tensor, list[str]]:
    """Images (B, 3, 32, 32) in [-1, 1] and prompts of training step ``step`` (a pure function of it)."""
    samples = ds.make_dataset(cfg.batch_size, seed=cfg.seed, kind="mixed", split="train",
                              start=step * cfg.batch_size)
    images = np.stack([s.image for s in samples])  # (B, H, W, 3) uint8
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1  # (B, 3, H, W)
    rng = np.random.default_rng([cfg.seed, step, 7])
    prompts = ["" if rng.random() < cfg.empty_prompt_fraction else s.prompt for s in samples]
    return x, prompts


def noise_at(step: int, cfg: TrainConfig, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise (like the images) and timesteps (B,) of training step ``step``: drawn on the CPU from a per-step
    seed, so a run is the same sequence of batches on any device and with any number of workers."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    noise = torch.randn(shape, generator=gen)
    t = torch.randint(0, N_TRAIN_TIMESTEPS, (shape[0],), generator=gen)
    n_high = int(round(cfg.high_noise_fraction * shape[0]))
    if n_high:  # the layout (where objects go) is decided at high noise: sample it more often
        t[:n_high] = torch.randint(cfg.high_noise_from, N_TRAIN_TIMESTEPS, (n_high,), generator=gen)
    return noise, t


class StepBatches(torch.utils.data.Dataset):
    """Item ``i`` = everything step ``first + i`` trains on: (images, prompts, noise, timesteps)."""

    def __init__(self, cfg: TrainConfig, first: int):
        self.cfg, self.first = cfg, first

    def __len__(self) -> int:
        return max(0, self.cfg.max_steps - self.first)

    def __getitem__(self, i: int):
        x0, prompts = batch_at(self.first + i, self.cfg)
        return (x0, prompts, *noise_at(self.first + i, self.cfg, tuple(x0.shape)))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r}: CUDA is not available on this machine")
    return device


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(cfg: TrainConfig, install: bool = True) -> dict:
    from diffusers import DDPMScheduler, UNet2DConditionModel

    device = resolve_device(cfg.device)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    run_dir = ROOT / cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt"

    unet = UNet2DConditionModel.from_config(unet_config(cfg.block_out_channels, cfg.layers_per_block,
                                                        cfg.attention_heads))
    ema = UNet2DConditionModel.from_config(unet.config)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    unet.to(device)
    ema.to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                            fused=device.type == "cuda")
    noise_sched = DDPMScheduler.from_config(scheduler_config())
    alphas_cumprod = noise_sched.alphas_cumprod.float().to(device)  # (T,)
    tokenizer, text_encoder = load_text_encoder(cfg.text_encoder)
    cache = PromptCache(tokenizer, text_encoder.to(device), store_device=device)

    step, elapsed, log_rows, phases = 0, 0.0, [], []
    earlier_runs: list[dict] = []
    if cfg.init_from and not ckpt_path.exists():
        # A continuation of an earlier run: its (EMA) weights start both the model and the EMA; the optimiser
        # starts fresh, with the warm-up. The earlier runs are listed in training.json and the model card.
        start = load_unet(Path(cfg.init_from))
        unet.load_state_dict(start.state_dict())
        ema.load_state_dict(start.state_dict())
        info_path = Path(cfg.init_from) / "training.json"
        if info_path.is_file():
            info = json.loads(info_path.read_text())
            earlier_runs = info.get("earlier_runs", []) + [
                {k: info.get(k) for k in ("steps", "samples_seen", "wall_time_s", "hardware", "samples_per_s",
                                          "config")}]
        print(f"initialised from {cfg.init_from}", flush=True)
    if ckpt_path.exists() and not cfg.quick:
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        unet.load_state_dict(state["unet"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step, elapsed, log_rows = state["step"], state["elapsed"], state["log_rows"]
        earlier_runs = state.get("earlier_runs", [])
        phases = state.get("phases") or [{"from_step": 0, "config": state["config"]}]
        print(f"resumed from {ckpt_path} at step {step} ({elapsed / 60:.1f} min)", flush=True)

    hardware = device_description(str(device))
    if not phases or phases[-1]["config"] != cfg.to_dict():
        # A resumed run may change the recipe (e.g. the loss weighting): keep the history for the model card.
        phases.append({"from_step": step, "config": cfg.to_dict(), "hardware": hardware})
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"UNet parameters: {n_params / 1e6:.2f} M; device {hardware}", flush=True)

    def checkpoint(final: bool = False) -> None:
        _atomic_torch_save({"unet": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                            "step": step, "elapsed": elapsed, "log_rows": log_rows, "config": cfg.to_dict(),
                            "phases": phases, "earlier_runs": earlier_runs},
                           ckpt_path)
        export(run_dir / "weights", final)
        meta = provenance(cfg.to_dict(), seeds=[cfg.seed], device=str(device), steps_done=step, wall_time_s=elapsed,
                          unet_parameters=n_params, final=final)
        write_table(pd.DataFrame(log_rows), ROOT / cfg.loss_log, meta)

    def export(directory: Path, final: bool) -> None:
        save_unet(ema, directory)
        info = {"steps": step, "samples_seen": step * cfg.batch_size, "wall_time_s": round(elapsed, 1),
                "hardware": hardware, "threads": cfg.threads, "unet_parameters": n_params,
                "config": cfg.to_dict(), "final": final, "phases": phases, "earlier_runs": earlier_runs,
                "samples_per_s": round(step * cfg.batch_size / max(elapsed, 1e-9), 2)}
        (directory / "training.json").write_text(json.dumps(info, indent=2) + "\n")

    # Scenes are drawn in worker processes when asked (a GPU step is faster than drawing 256 scenes); every
    # batch is a pure function of its step, so workers change the speed, never the run.
    batches = torch.utils.data.DataLoader(StepBatches(cfg, step), batch_size=None, num_workers=cfg.workers,
                                          pin_memory=device.type == "cuda",
                                          prefetch_factor=4 if cfg.workers else None,
                                          persistent_workers=False)
    budget_s = cfg.time_budget_minutes * 60
    last_ckpt = time.time()
    window: list[torch.Tensor] = []
    t_window = time.time()
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train", mininterval=30, disable=None)
    unet.train()
    params, ema_params = list(unet.parameters()), list(ema.parameters())
    t0 = time.time()
    for x0, prompts, noise, t in batches:
        if step >= cfg.max_steps or elapsed >= budget_s:
            break
        x0, noise, t = (v.to(device, non_blocking=True) for v in (x0, noise, t))
        context = cache(prompts)  # (B, L, 384)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        v_target = a.sqrt() * noise - (1 - a).sqrt() * x0
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg, elapsed)
        pred = unet(add_coordinate_channels(x_t), t, encoder_hidden_states=context).sample
        snr = (a / (1 - a)).view(-1)
        if cfg.loss_weighting == "min_snr":
            weight = torch.clamp(snr, max=cfg.min_snr_gamma) / (snr + 1)  # min-SNR-γ weighting for v-prediction
        else:
            weight = torch.ones_like(snr)
        loss = (weight * (pred - v_target).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        step += 1
        window.append(loss.detach())
        bar.update(1)
        if step % cfg.log_every == 0:
            mean_loss = torch.stack(window).mean().item()  # waits for the GPU: the clock below is honest
            now = time.time()
            elapsed += now - t0
            t0 = now
            log_rows.append({"step": step, "loss": mean_loss, "lr": opt.param_groups[0]["lr"],
                             "elapsed_s": round(elapsed, 1),
                             "samples_per_s": round(len(window) * cfg.batch_size / (now - t_window), 2),
                             "cached_prompts": len(cache)})
            print(json.dumps(log_rows[-1]), flush=True)
            window, t_window = [], now
        if time.time() - last_ckpt >= cfg.checkpoint_minutes * 60:
            elapsed += time.time() - t0
            checkpoint()
            last_ckpt = t0 = time.time()
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed += time.time() - t0
    checkpoint(final=True)
    if install and not cfg.quick:
        install_weights(run_dir / "weights")
    return {"steps": step, "wall_time_s": elapsed}


def export_raw(run_dir: Path) -> Path:
    """Write the raw (non-EMA) weights of ``run_dir/checkpoint.pt`` to ``run_dir/weights_raw``; returns that."""
    from diffusers import UNet2DConditionModel

    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    ema_dir, out = run_dir / "weights", run_dir / "weights_raw"
    unet = UNet2DConditionModel.from_config(json.loads((ema_dir / "unet" / "config.json").read_text()))
    unet.load_state_dict(state["unet"])
    save_unet(unet, out)
    info = json.loads((ema_dir / "training.json").read_text())
    info.update(steps=state["step"], weights="raw (no EMA)")
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def install_weights(src: Path, dst: Path = WEIGHTS_DIR) -> None:
    """Copy an exported weights folder into the package and (re)write its model card."""
    for sub in ("unet", "scheduler"):
        if (dst / sub).exists():
            shutil.rmtree(dst / sub)
        shutil.copytree(src / sub, dst / sub)
    shutil.copy2(src / "training.json", dst / "training.json")
    write_model_card(dst)
    size = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
    if size > 16 * 2**20:
        raise ValueError(f"weights folder {dst} is {size / 2**20:.1f} MiB, over the 16 MiB limit")
    print(f"installed weights into {dst} ({size / 2**20:.2f} MiB)", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few tiny steps (CI)")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--time-budget-minutes", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--loss-weighting", choices=("min_snr", "v"))
    parser.add_argument("--high-noise-fraction", type=float)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--device", help="'auto' (default: CUDA when available), 'cpu' or 'cuda[:N]'")
    parser.add_argument("--workers", type=int, help="processes drawing the training scenes (default 0)")
    parser.add_argument("--text-encoder", help="text encoder model folder (default: the packaged MiniLM)")
    parser.add_argument("--init-from", help="start a fresh run from this weights folder (e.g. the bundled one)")
    parser.add_argument("--run-dir", help="checkpoint and exported weights (default tmp/shapes_run)")
    parser.add_argument("--loss-log", help="loss table (default results/shapes_train_loss.csv)")
    parser.add_argument("--no-install", action="store_true", help="do not copy the weights into the package")
    parser.add_argument("--export-only", action="store_true",
                        help="install <run_dir>/weights of the latest checkpoint into the package and exit")
    parser.add_argument("--raw", action="store_true",
                        help="with --export-only: export the raw (not EMA) weights of the latest checkpoint")
    args = parser.parse_args(argv)
    cfg = TrainConfig.quick_config() if args.quick else TrainConfig()
    overrides = {k: v for k, v in (("max_steps", args.max_steps), ("time_budget_minutes", args.time_budget_minutes),
                                   ("batch_size", args.batch_size), ("loss_weighting", args.loss_weighting),
                                   ("high_noise_fraction", args.high_noise_fraction),
                                   ("learning_rate", args.learning_rate), ("device", args.device),
                                   ("workers", args.workers), ("text_encoder", args.text_encoder),
                                   ("run_dir", args.run_dir), ("loss_log", args.loss_log),
                                   ("init_from", args.init_from)) if v is not None}
    cfg = dataclasses.replace(cfg, **overrides)
    if args.export_only:
        src = ROOT / cfg.run_dir / "weights"
        if args.raw:
            src = export_raw(ROOT / cfg.run_dir)
        install_weights(src)
        return
    print(json.dumps(cfg.to_dict()), flush=True)
    print(json.dumps(train(cfg, install=not args.no_install)), flush=True)


if __name__ == "__main__":
    main()
