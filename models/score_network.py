"""Score network of the static-PET diffusion prior: a 2D MONAI ``DiffusionModelUNet`` predicting the noise
of a 1000-step linear-beta DDPM, with its configuration, intensity normalisation and safe (de)serialisation.

Weights are stored with safetensors (never pickle) beside a ``config.json`` that records the architecture,
the normalisation, the training recipe and the SHA-256 of the weights file; :func:`load_score_network`
refuses a weights file whose hash differs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDPMScheduler
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file

from dynamic_pet.errors import InputError

WEIGHTS_FILE = "score_net.safetensors"
CONFIG_FILE = "config.json"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "prior"


@dataclass(frozen=True)
class ScoreNetConfig:
    """Architecture, noise schedule and intensity normalisation of the score network.

    Attributes
    ----------
    channels, num_res_blocks, attention_levels, norm_num_groups:
        ``DiffusionModelUNet`` arguments (2D, one input and one output channel). (16, 32, 64, 64) with one
        residual block per level and no attention (1.04 M parameters, receptive field of four levels) ran
        2-2.5x faster than (32, 64, 64) (1.06 M) in training and inference on these CPUs; see
        ``models/prior/MODEL_CARD.md`` for the timing that chose it.
    num_train_timesteps, beta_start, beta_end:
        DDPM linear-beta schedule (Ho et al. 2020).
    suv_max:
        Static images in SUV are clipped to [0, suv_max] and mapped linearly onto ``value_range``.
    value_range:
        (lo, hi) of the network's input domain; ``lo`` is the background (SUV 0).
    robust_level:
        Where the training volumes' robust maximum (99.9th percentile in the body) sits, as a fraction
        of the [lo, hi] range (median over training phantoms); the samplers scale Ki and V to match.
    pixel_mm:
        (smallest, largest) pixel side of the training slices in mm; the samplers put a study with finer
        voxels on a grid of the smallest (``dynamic_pet.prior_grid``).
    """

    channels: tuple[int, ...] = (16, 32, 64, 64)
    num_res_blocks: int = 1
    attention_levels: tuple[bool, ...] = (False, False, False, False)
    norm_num_groups: int = 8
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    suv_max: float = 16.0
    value_range: tuple[float, float] = (-1.0, 1.0)
    robust_level: float = 0.8
    pixel_mm: tuple[float, float] = (3.5, 4.0)

    @property
    def size_multiple(self) -> int:
        """Spatial sizes the UNet accepts are multiples of this (one 2x down-sampling per extra level)."""
        return 2 ** (len(self.channels) - 1)

    def suv_to_model(self, suv: np.ndarray) -> np.ndarray:
        """SUV -> network domain: clip to [0, suv_max], map linearly onto ``value_range``."""
        lo, hi = self.value_range
        return (lo + (hi - lo) * np.clip(suv, 0.0, self.suv_max) / self.suv_max).astype(np.float32)

    def model_to_suv(self, x: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`suv_to_model` (without the clipping)."""
        lo, hi = self.value_range
        return ((x - lo) / (hi - lo) * self.suv_max).astype(np.float32)


@dataclass
class ModelRecord:
    """What ``config.json`` holds: the network config, the training recipe and the weights' SHA-256."""

    network: ScoreNetConfig = field(default_factory=ScoreNetConfig)
    training: dict = field(default_factory=dict)
    weights_sha256: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "ModelRecord":
        raw = json.loads(text)
        net = {k: tuple(v) if isinstance(v, list) else v for k, v in raw["network"].items()}
        return cls(network=ScoreNetConfig(**net), training=raw.get("training", {}),
                   weights_sha256=raw.get("weights_sha256", ""))


def build_network(cfg: ScoreNetConfig) -> DiffusionModelUNet:
    """The (untrained) 2D noise-prediction UNet described by ``cfg``."""
    return DiffusionModelUNet(
        spatial_dims=2, in_channels=1, out_channels=1, channels=cfg.channels,
        num_res_blocks=cfg.num_res_blocks, attention_levels=cfg.attention_levels,
        norm_num_groups=cfg.norm_num_groups, num_head_channels=cfg.channels[-1])


def build_scheduler(cfg: ScoreNetConfig) -> DDPMScheduler:
    """The DDPM noise schedule the network was trained with."""
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, schedule="linear_beta",
                         beta_start=cfg.beta_start, beta_end=cfg.beta_end)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_score_network(model: torch.nn.Module, record: ModelRecord, out_dir: str | Path) -> ModelRecord:
    """Write ``score_net.safetensors`` and ``config.json`` (with the weights' SHA-256) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    record = dataclasses.replace(record, weights_sha256=sha256_bytes((out / WEIGHTS_FILE).read_bytes()))
    (out / CONFIG_FILE).write_text(record.to_json() + "\n")
    return record


def load_score_network(model_dir: str | Path | None = None) -> tuple[DiffusionModelUNet, ModelRecord]:
    """Load the network from ``model_dir`` (default the shipped ``models/prior``), checking its SHA-256.

    Raises
    ------
    InputError
        When the folder lacks a file, or the weights do not match the hash recorded in ``config.json``.
    """
    folder = Path(model_dir) if model_dir is not None else DEFAULT_MODEL_DIR
    cfg_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise InputError("diffusion prior model file not found", path=p)
    record = ModelRecord.from_json(cfg_path.read_text())
    data = weights_path.read_bytes()  # hash and parse the same bytes
    digest = sha256_bytes(data)
    if digest != record.weights_sha256:
        raise InputError(f"weights SHA-256 {digest[:12]}... differs from {record.weights_sha256[:12]}... "
                         f"recorded in {CONFIG_FILE}; refusing a modified or corrupt model", path=weights_path)
    model = build_network(record.network)
    model.load_state_dict(load_safetensors_bytes(data), strict=True)
    return model.eval(), record
