"""Train the static-PET diffusion prior on phantom static images.

Usage::

    python -m models.train_prior --out models/prior --steps 3000 --seed 0 --minutes 60

Data: high-count static slices (SUV) of phantom seeds 0.. of the ``demo`` and ``torso`` presets
(:func:`phantom.static_images.static_training_slices`); seeds 1000-1099 (``EVALUATION_SEEDS``) are reserved
for validation and evaluation and never used for training; the validation loss curve uses seed 999, which
is not a training seed either.
Random 64x64 patches centred on body voxels, random flips and 90-degree turns, and a log-uniform intensity
gain; SUV clipped at ``suv_max`` and mapped to [-1, 1]. Epsilon-prediction DDPM loss, AdamW with warm-up and
cosine decay, an exponential moving average of the weights (the EMA weights are shipped). Torch and numpy
are seeded and torch runs deterministic algorithms, so a run on the CPU is repeatable for a given seed and
step count when the step budget is reached before the ``--minutes`` wall-clock cap (on a loaded machine the
cap ends the run and the learning-rate decay follows elapsed time instead; the steps done are recorded).
``--device cuda`` trains on a GPU; there two runs of the same seed are not bit for bit equal (measured on
an H100: two 200-step runs gave different weights), so a GPU-trained prior is reproducible in recipe only.
"""

from __future__ import annotations

import argparse
import copy
import csv
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from phantom.static_images import TRAINING_COUNT_LEVEL

from .score_network import (WEIGHTS_FILE, ModelRecord, ScoreNetConfig, build_network, build_scheduler,
                            save_score_network)

log = logging.getLogger("models.train_prior")


@dataclass(frozen=True)
class TrainConfig:
    """Training recipe (stored in ``config.json`` under ``training``)."""

    steps: int = 3000
    batch_size: int = 16
    patch: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    ema_decay: float = 0.995  # with warm-up: min(decay, (1 + step) / (10 + step))
    gain_range: tuple[float, float] = (0.7, 1.4)  # log-uniform intensity jitter
    presets: tuple[str, ...] = ("demo", "torso")
    seeds_per_preset: tuple[int, ...] = (16, 8)  # training seeds 0..n-1 of each preset
    count_level: float = TRAINING_COUNT_LEVEL  # static images' counts relative to the full-dose frame
    validation_seed: int = 999  # held out from training; not an evaluation seed
    log_every: int = 50
    seed: int = 0
    minutes: float = 60.0
    threads: int = 2
    device: str = "cpu"  # a GPU trains a larger network in minutes (see --channels)


class PatchSampler:
    """Random body-centred patches with flips, 90-degree turns and an intensity gain, in the model domain."""

    def __init__(self, slices: list[np.ndarray], net_cfg: ScoreNetConfig, cfg: TrainConfig, seed: int):
        self.rng = np.random.default_rng(seed)
        self.net_cfg, self.cfg = net_cfg, cfg
        half = cfg.patch // 2
        self.slices = [np.pad(s, half, mode="constant") for s in slices]
        self.centres = [np.argwhere(s > 0.2) for s in self.slices]  # body voxels (padded coordinates)
        keep = [i for i, c in enumerate(self.centres) if len(c)]
        self.slices, self.centres = [self.slices[i] for i in keep], [self.centres[i] for i in keep]

    def batch(self, n: int) -> np.ndarray:
        return np.stack([self.patch() for _ in range(n)])[:, None]

    def patch(self) -> np.ndarray:
        r, p = self.rng, self.cfg.patch
        i = int(r.integers(len(self.slices)))
        cy, cx = self.centres[i][r.integers(len(self.centres[i]))]
        y0 = int(np.clip(cy - p // 2 + r.integers(-p // 4, p // 4 + 1), 0, self.slices[i].shape[0] - p))
        x0 = int(np.clip(cx - p // 2 + r.integers(-p // 4, p // 4 + 1), 0, self.slices[i].shape[1] - p))
        img = self.slices[i][y0:y0 + p, x0:x0 + p]
        img = np.rot90(img, int(r.integers(4)))
        img = img[:, ::-1] if r.random() < 0.5 else img
        gain = float(np.exp(r.uniform(*np.log(self.cfg.gain_range))))
        return self.net_cfg.suv_to_model(img * gain)


def load_volumes(presets: tuple[str, ...], seeds: list[range], count_level: float) -> list[np.ndarray]:
    """Static training slices (N, Y, X) of every (preset, seed); refuses the evaluation seeds."""
    from phantom.static_images import EVALUATION_SEEDS, static_training_slices

    reserved = sorted({s for rng in seeds for s in rng if s in EVALUATION_SEEDS})
    if reserved:
        raise ValueError(f"seeds {reserved} are reserved for evaluation")
    out = []
    for preset, rng in zip(presets, seeds):
        for seed in rng:
            out.append(static_training_slices(seed, preset, count_level=count_level))
        log.info("loaded %s seeds %d-%d: %d slices in all", preset, rng[0], rng[-1], sum(map(len, out)))
    return out


def training_pixel_mm(presets) -> tuple[float, float]:
    """(smallest, largest) in-plane pixel side of the training presets' slices, in mm."""
    from phantom.presets import PRESETS
    sides = [s for p in presets for s in PRESETS[p].voxel_mm[1:]]
    return (min(sides), max(sides))


def robust_level(volumes: list[np.ndarray], net_cfg: ScoreNetConfig) -> float:
    """Median over volumes of the body's 99.9th percentile in the model's [0, 1] scale (for the samplers)."""
    return float(np.median([np.percentile(v[v > 0.2], 99.9) / net_cfg.suv_max for v in volumes]))


def _lr(step: int, cfg: TrainConfig, elapsed_s: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to 10% over the step budget or the time cap, whichever is nearer."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = max((step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1), elapsed_s / (60 * cfg.minutes))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(frac, 1.0))))


def train(train_slices: list[np.ndarray], val_slices: list[np.ndarray], net_cfg: ScoreNetConfig,
          cfg: TrainConfig, log_rows: list[dict]) -> tuple[torch.nn.Module, int]:
    """Train; returns the EMA network and the number of steps done. Appends loss rows to ``log_rows``."""
    if torch.device(cfg.device).type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's deterministic mode needs it
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _train(train_slices, val_slices, net_cfg, cfg, log_rows)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def _train(train_slices, val_slices, net_cfg, cfg, log_rows):
    torch.manual_seed(cfg.seed)
    dev = torch.device(cfg.device)
    net, sched = build_network(net_cfg).to(dev), build_scheduler(net_cfg)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sampler = PatchSampler(train_slices, net_cfg, cfg, cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    val = tuple(x.to(dev) for x in _validation_batch(val_slices, net_cfg, cfg, sched))
    t0, window, step = time.perf_counter(), [], 0
    while step < cfg.steps and time.perf_counter() - t0 < 60 * cfg.minutes:
        x0 = torch.from_numpy(sampler.batch(cfg.batch_size))
        noise = torch.randn(x0.shape, generator=gen)  # drawn on the CPU: the same stream on any device
        t = torch.randint(0, sched.num_train_timesteps, (cfg.batch_size,), generator=gen)
        x0, noise, t = x0.to(dev), noise.to(dev), t.to(dev)
        loss = torch.mean((net(sched.add_noise(x0, noise, t), t) - noise) ** 2)
        lr = _lr(step, cfg, time.perf_counter() - t0)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1.0 - decay)
        window.append(loss.item())
        step += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            row = {"step": step, "train_loss": float(np.mean(window)), "val_loss": _val_loss(net, val),
                   "val_loss_ema": _val_loss(ema, val),
                   "lr": lr, "elapsed_s": round(time.perf_counter() - t0, 1)}
            log_rows.append(row)
            log.info("step %d loss %.4f val %.4f val(EMA) %.4f %.0f s", step, row["train_loss"], row["val_loss"],
                     row["val_loss_ema"], row["elapsed_s"])
            window = []
    return ema.eval(), step


def _validation_batch(slices, net_cfg, cfg, sched, n: int = 64) -> tuple[torch.Tensor, ...]:
    """Fixed noisy patches from the validation phantom, t spread over the schedule."""
    x0 = torch.from_numpy(PatchSampler(slices, net_cfg, cfg, seed=12345).batch(n))
    gen = torch.Generator().manual_seed(12345)
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.linspace(0, sched.num_train_timesteps - 1, n).long()
    return sched.add_noise(x0, noise, t), t, noise


@torch.no_grad()
def _val_loss(net, val) -> float:
    x_t, t, noise = val
    was_training = net.training
    loss = float(torch.mean((net.eval()(x_t, t) - noise) ** 2))
    net.train(was_training)
    return loss


def write_loss_curve(rows: list[dict], out: Path) -> None:
    """``loss.csv`` and ``loss.png`` (training loss per window, validation loss of the EMA weights)."""
    with open(out / "loss.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["train_loss"] for r in rows], label="training (window mean)")
    ax.plot(steps, [r["val_loss"] for r in rows], label="validation seed")
    ax.plot(steps, [r["val_loss_ema"] for r in rows], label="validation seed, EMA weights")
    ax.set(xlabel="step", ylabel="epsilon MSE", title="Static-PET prior: training loss", yscale="log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    plt.close(fig)


ARCHITECTURE_TIMING = """\
Measured on the 2-core build machine (torch 2.13 CPU, 1 thread, other jobs running; ranges over repeats):

| channels (1 res block per level, no attention) | parameters | training step, 16 x 64x64 | one pass, 80 slices 80x80 |
| --- | --- | --- | --- |
| (16, 32, 64, 64) **chosen** | 1.04 M | 0.51-0.59 s | 1.4-1.7 s |
| (32, 64, 64) | 1.06 M | 1.28-1.31 s | 3.1-3.6 s |

With 2 threads on an idle machine: 0.31 s vs 0.79 s per step. The four-level network is 2-2.5x cheaper
for the same parameter count and sees a wider context (receptive field of three down-samplings).

**Longer training and a wider network on a GPU did not help** (one H100, `--device cuda --batch-size 64
--steps 12000 --minutes 6.3`, same data and seed; both stopped at the time cap after about 7,000 steps).
The same network reached a validation loss of 0.0051 and one of channels (32, 64, 128, 128) (4.13 M
parameters) 0.0049, against 0.0060 for the shipped weights. On the validation seeds 1090-1091 (demo preset,
RED-diff and HQS at 5 % and 25 % dose, PSNR against the full-count reference) neither made better maps: the
same network -0.17 to +0.13 dB on Ki and -0.15 to +0.15 dB on V; the wider one -0.16 to +0.23 dB on Ki and
-0.34 to +0.33 dB on V, worst on V at 5 % dose (-0.06 to -0.34 dB), and 3-4x slower on the CPU. So these
CPU-trained weights stay the default and no GPU-trained prior is shipped; `--device cuda` and `--channels`
remain for training on other data."""


def train_command(record: ModelRecord) -> str:
    """The command line that retrains ``record``'s network (options at their defaults left out)."""
    tr, default = record.training, TrainConfig()
    args = [f"--{key} {tr.get(key)}" for key in ("steps", "seed", "minutes", "threads")]
    if tr.get("batch_size", default.batch_size) != default.batch_size:
        args.append(f"--batch-size {tr['batch_size']}")
    if tr.get("device", default.device) != default.device:
        args.append(f"--device {tr['device']}")
    if tuple(record.network.channels) != ScoreNetConfig.channels:
        args.append("--channels " + " ".join(map(str, record.network.channels)))
    return " ".join(["python -m models.train_prior --out models/prior", *args])


def write_model_card(record: ModelRecord, rows: list[dict], n_params: int, out: Path) -> None:
    """``MODEL_CARD.md`` from the record, so the card always matches the weights it ships with."""
    net, tr = record.network, record.training
    last = rows[-1] if rows else {}
    capped = tr.get("steps_done", 0) < tr.get("steps", 0)
    if tr.get("device", "cpu") != "cpu":
        repro = ("It ran on a GPU, where two runs of the same seed give different weights: reproducible in "
                 "recipe only.")
    elif capped:
        repro = ("It stopped at the wall-clock cap before the step budget (the machine was shared), so the "
                 "learning-rate decay followed elapsed time and the run is not bit-reproducible; with the step "
                 "budget reached first it is.")
    else:
        repro = "The run is repeatable bit for bit with these arguments."
    text = f"""# Static-PET diffusion prior (score network)

**Research use only; not for diagnosis.** A 2D denoising diffusion model (DDPM, epsilon prediction) of
high-count static FDG PET slices, used as the prior of the Patlak Ki and V samplers
(`dynamic_pet/samplers.py`: RED-diff, HQS), following arXiv 2512.19584.

- Weights: `{WEIGHTS_FILE}` (safetensors), SHA-256 `{record.weights_sha256}` (checked at load time).
- Architecture: MONAI `DiffusionModelUNet`, 2D, channels {list(net.channels)}, {net.num_res_blocks} residual
  block{"s" if net.num_res_blocks > 1 else ""} per level, no attention, GroupNorm {net.norm_num_groups} groups;
  {n_params / 1e6:.2f} M parameters.
  Fully convolutional: runs on whole slices padded to a multiple of {net.size_multiple}.
- Noise schedule: {net.num_train_timesteps} steps, linear beta {net.beta_start:g} to {net.beta_end:g}.
- Intensity normalisation: SUV clipped to [0, {net.suv_max:g}] and mapped linearly onto
  {list(net.value_range)} (background = {net.value_range[0]:g}). The training volumes' robust maximum (99.9th
  percentile in the body) sits at `robust_level` = {net.robust_level:g} of that range (median over training
  phantoms); the samplers scale Ki and V so that their own robust maxima land there.
- Pixel size: training slices have {net.pixel_mm[0]:g}-{net.pixel_mm[1]:g} mm pixels (`pixel_mm`); a study with finer
  voxels is sampled on a {net.pixel_mm[0]:g} mm grid and the maps interpolated back (`dynamic_pet/prior_grid.py`).

## Training data
Digital phantom static images only (`phantom.static_images.static_training_slices`: the 50-60 min frame at
{tr.get("count_level", 1)} times the counts of the full-dose frame, i.e. a high-count static scan, through the
scanner model, OSEM, SUV): presets {list(tr.get("presets", []))}, seeds 0 to n-1 with
n = {list(tr.get("seeds_per_preset", []))} per preset, {tr.get("train_slices", "?")} slices. **Seeds 1000-1099 are reserved for
validation and evaluation and were never used**; the validation loss uses seed {tr.get("validation_seed")}
(demo), which is no training seed either. No parametric map or ground truth was seen in training.
Patches of {tr.get("patch")}x{tr.get("patch")} centred on body voxels, random 90-degree turns and flips,
log-uniform intensity gain in {list(tr.get("gain_range", []))}.

## Training
`{train_command(record)}`:
AdamW (lr {tr.get("lr")}, weight decay {tr.get("weight_decay")}, {tr.get("warmup_steps")} warm-up steps, cosine decay to 10%),
batch {tr.get("batch_size")}, EMA of the weights (decay {tr.get("ema_decay")} after a warm-up; the EMA weights are shipped).
This run: {tr.get("steps_done")} steps, {tr.get("minutes_total")} min in all including data simulation
(torch {tr.get("torch")}). Final training loss {last.get("train_loss", float("nan")):.4f}, validation loss
of the EMA weights {last.get("val_loss_ema", float("nan")):.4f} (epsilon MSE, t spread over the schedule).
{repro} Curve: `loss.png`, `loss.csv`.

## Architecture choice
{ARCHITECTURE_TIMING}

## Limitations
- Trained on simulated phantoms only; real-patient static PET would be the data of a clinical model.
- The training images carry the scanner's blur: the prior favours that resolution, it does not recover it.
- 2D slices: no axial context within one network pass (the samplers cut axial, coronal and sagittal slices
  in turn). A 2.5D variant (the two neighbour slices as extra input channels, same recipe, 16 min) reached a
  20% lower validation loss (0.0048 vs 0.0060 at step 2900) but no better maps on validation seeds 1090-1091
  (HQS / RED-diff, 25% and 5% dose: Ki -0.3 to +0.1 dB, V -0.8 to -0.1 dB; HQS lam 0.5 / 2 and RED-diff
  lam 2 / 8 at 5% no better), so the 2D network stays. Hot lesions brighter than about 3x the body's
  robust maximum exceed the clipped training range.
"""
    (out / "MODEL_CARD.md").write_text(text)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("models/prior"))
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--minutes", type=float, default=TrainConfig.minutes, help="wall-clock cap of the loop")
    p.add_argument("--threads", type=int, default=TrainConfig.threads)
    p.add_argument("--seeds-per-preset", type=int, nargs="+", default=list(TrainConfig.seeds_per_preset))
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--device", default=TrainConfig.device, help="cpu or cuda")
    p.add_argument("--channels", type=int, nargs="+", default=list(ScoreNetConfig.channels),
                   help="UNet channels per level (the default trains on 2 CPU cores within the hour)")
    return p


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(a.threads)
    cfg = TrainConfig(steps=a.steps, seed=a.seed, minutes=a.minutes, threads=a.threads,
                      seeds_per_preset=tuple(a.seeds_per_preset), batch_size=a.batch_size, device=a.device)
    t_start = time.perf_counter()
    volumes = load_volumes(cfg.presets, [range(n) for n in cfg.seeds_per_preset], cfg.count_level)
    (val_volume,) = load_volumes(("demo",), [range(cfg.validation_seed, cfg.validation_seed + 1)], cfg.count_level)
    net_cfg = ScoreNetConfig(channels=tuple(a.channels), attention_levels=(False,) * len(a.channels),
                             robust_level=round(robust_level(volumes, ScoreNetConfig()), 3),
                             pixel_mm=training_pixel_mm(cfg.presets))
    train_slices = [s for v in volumes for s in v]
    rows: list[dict] = []
    net, done = train(train_slices, list(val_volume), net_cfg, cfg, rows)
    training = asdict(cfg) | {"steps_done": done, "train_slices": len(train_slices),
                              "minutes_total": round((time.perf_counter() - t_start) / 60, 1),
                              "torch": torch.__version__, "machine": platform.processor() or platform.machine()}
    record = save_score_network(net, ModelRecord(network=net_cfg, training=training), a.out)
    write_loss_curve(rows, a.out)
    write_model_card(record, rows, sum(p.numel() for p in net.parameters()), a.out)
    log.info("saved %s (sha256 %s), %d steps", a.out, record.weights_sha256, done)


def rewrite_model_card(folder: Path) -> None:
    """Regenerate ``MODEL_CARD.md`` of a trained folder from its ``config.json`` and ``loss.csv``."""
    record = ModelRecord.from_json((folder / "config.json").read_text())
    with open(folder / "loss.csv") as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    n_params = sum(p.numel() for p in build_network(record.network).parameters())
    write_model_card(record, rows, n_params, folder)


if __name__ == "__main__":
    main()
