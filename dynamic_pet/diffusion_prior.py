"""The static-PET diffusion prior as the samplers see it: a noise predictor eps(x_t, t) on whole slices.

The score network (``models/score_network.py``) is fully convolutional, so a slice of any size is run whole:
padded by reflection to the network's size multiple and cropped back, with no tiles and hence no seams.
Slices are batched; inference runs under ``torch.no_grad``, on CPU or CUDA, optionally under bf16/fp16
autocast on CUDA. MONAI (and with it the MONAI Deploy SDK it drags in) is imported only when a prior is
built, so importing this module stays cheap.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


class DiffusionPrior:
    """Noise predictor of a DDPM trained on static PET slices.

    Parameters
    ----------
    model_dir:
        Folder with ``score_net.safetensors`` and ``config.json``; default the shipped ``models/prior``.
        The weights' SHA-256 is checked against ``config.json`` (:class:`~dynamic_pet.errors.InputError`
        on mismatch).
    device:
        ``"cpu"`` or ``"cuda"`` (or any torch device string).
    batch_size:
        Slices per network call.
    autocast:
        ``None``, ``"bf16"`` or ``"fp16"``: mixed-precision inference (CUDA only; ignored on CPU).
    dtype:
        Parameter and input dtype of the network (``torch.float32``; ``torch.float64`` for checks).
    """

    def __init__(self, model_dir: str | Path | None = None, *, device: str | torch.device = "cpu",
                 batch_size: int = 32, autocast: str | None = None, dtype: torch.dtype = torch.float32):
        from models.score_network import load_score_network

        net, record = load_score_network(model_dir)
        self._setup(net, record.network, device, batch_size, autocast, dtype)
        self.weights_sha256 = record.weights_sha256

    @classmethod
    def from_network(cls, net: torch.nn.Module, config, *, device: str | torch.device = "cpu",
                     batch_size: int = 32, autocast: str | None = None,
                     dtype: torch.dtype = torch.float32) -> "DiffusionPrior":
        """A prior around an in-memory network and its ``ScoreNetConfig`` (tests, training checks); the network
        is moved to ``device``/``dtype`` in place."""
        prior = cls.__new__(cls)
        prior._setup(net, config, device, batch_size, autocast, dtype)
        prior.weights_sha256 = ""
        return prior

    def _setup(self, net, config, device, batch_size, autocast, dtype) -> None:
        from models.score_network import build_scheduler

        if autocast not in (None, *_AUTOCAST):
            raise ValueError(f"autocast must be None, 'bf16' or 'fp16', given {autocast!r}")
        self.config = config
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_size = int(batch_size)
        self.autocast = autocast if self.device.type == "cuda" else None
        self.net = net.to(device=self.device, dtype=dtype).eval()
        self.alphas_cumprod = build_scheduler(config).alphas_cumprod.to(torch.float64)  # (T,) on CPU
        self.value_range = tuple(config.value_range)
        self.multiple = config.size_multiple

    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.numel())

    @torch.no_grad()
    def eps(self, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Predicted noise for a batch of noisy slices.

        Parameters
        ----------
        x_t: (B, 1, H, W) noisy slices in the network's value range, any H, W.
        t: diffusion step, one int for all slices or a (B,) tensor.

        Returns
        -------
        (B, 1, H, W) tensor, same dtype and device as ``x_t``.
        """
        b, _, h, w = x_t.shape
        t_all = torch.as_tensor(t, dtype=torch.long).reshape(-1)
        t_all = t_all.expand(b) if t_all.numel() == 1 else t_all
        padded, crop = self._pad(x_t.to(self.device, self.dtype))
        out = torch.empty_like(padded)
        for s in range(0, b, self.batch_size):
            chunk, ts = padded[s:s + self.batch_size], t_all[s:s + self.batch_size].to(self.device)
            with torch.autocast(self.device.type, dtype=_AUTOCAST.get(self.autocast), enabled=bool(self.autocast)):
                out[s:s + self.batch_size] = self.net(chunk, ts).to(self.dtype)
        return out[..., crop[0]:crop[0] + h, crop[1]:crop[1] + w].to(x_t.device, x_t.dtype)

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Reflect-pad H and W up to the network's size multiple, centred; returns the crop origin."""
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph == 0 and pw == 0:
            return x, (0, 0)
        pads = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        mode = "reflect" if max(pads[:2]) < w and max(pads[2:]) < h else "replicate"
        return F.pad(x, pads, mode=mode), (ph // 2, pw // 2)
