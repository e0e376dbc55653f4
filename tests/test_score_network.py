"""Score network: safetensors round trip, hash check, whole-slice inference on odd sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dynamic_pet.diffusion_prior import DiffusionPrior
from dynamic_pet.errors import InputError
from models.score_network import (CONFIG_FILE, DEFAULT_MODEL_DIR, WEIGHTS_FILE, ModelRecord, ScoreNetConfig,
                                  build_network, save_score_network)

torch.set_num_threads(1)
TINY = ScoreNetConfig(channels=(8, 16, 16), attention_levels=(False, False, False), norm_num_groups=4)


def _smooth_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A PET-like smooth slice in the model domain: blobs on a disc over a -1 background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = np.zeros((h, w))
    for _ in range(6):
        cy, cx, r, a = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, 10), rng.uniform(0.2, 1.0)
        img += a * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r ** 2))
    return torch.tensor(-1.0 + img, dtype=torch.float32)[None, None]


def _random_net(seed: int = 0) -> torch.nn.Module:
    """Random weights; MONAI zero-initialises the output convolution, which would make eps identically 0."""
    torch.manual_seed(seed)
    net = build_network(TINY)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return net


@pytest.fixture()
def saved(tmp_path):
    net = _random_net()
    save_score_network(net, ModelRecord(network=TINY, training={"note": "test"}), tmp_path)
    return net, tmp_path


def test_round_trip_is_bit_exact(saved):
    net, folder = saved
    x = torch.randn(3, 1, 40, 32, generator=torch.Generator().manual_seed(1))
    loaded = DiffusionPrior(folder)
    direct = DiffusionPrior.from_network(net, TINY)
    eps = loaded.eps(x, 250)
    assert eps.abs().max() > 0.01  # a real, non-zero prediction
    assert torch.equal(eps, direct.eps(x, 250))
    assert loaded.config == TINY
    assert loaded.weights_sha256 == json.loads((folder / CONFIG_FILE).read_text())["weights_sha256"]


def test_tampered_weights_are_refused(saved):
    _, folder = saved
    data = bytearray((folder / WEIGHTS_FILE).read_bytes())
    data[-5] ^= 0x01  # one bit of one weight
    (folder / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(InputError, match="SHA-256") as err:
        DiffusionPrior(folder)
    assert err.value.path.endswith(WEIGHTS_FILE)


def test_missing_weights_are_refused(saved):
    _, folder = saved
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(InputError, match="not found"):
        DiffusionPrior(folder)


def test_normalisation_round_trip():
    suv = np.array([0.0, 1.0, 5.3, 16.0], np.float32)
    x = TINY.suv_to_model(suv)
    assert x[0] == -1.0 and x[-1] == 1.0
    np.testing.assert_allclose(TINY.model_to_suv(x), suv, rtol=1e-6)
    assert TINY.suv_to_model(np.array([40.0]))[0] == 1.0  # clipped at suv_max


def test_odd_size_whole_slice_is_finite_and_batch_independent():
    net = _random_net()
    x = torch.cat([_smooth_image(45, 37, s) for s in range(3)])
    one = DiffusionPrior.from_network(net, TINY, batch_size=1).eps(x, torch.tensor([10, 200, 900]))
    many = DiffusionPrior.from_network(net, TINY, batch_size=8).eps(x, torch.tensor([10, 200, 900]))
    assert one.shape == x.shape and torch.isfinite(one).all()
    torch.testing.assert_close(one, many, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not (DEFAULT_MODEL_DIR / WEIGHTS_FILE).is_file(), reason="shipped prior weights absent")
def test_whole_slice_is_translation_consistent():
    """Shifting the field of view by the network's size multiple shifts eps with it, away from the edges:
    no tile seams, and the reflect padding only touches a thin border. (GroupNorm statistics change with
    the field of view, so agreement is close, not exact: ~2% measured with the shipped weights.)"""
    prior = DiffusionPrior()
    clean = -0.7 + 0.3 * _smooth_image(72, 64, seed=5)
    t = 50
    ab = float(prior.alphas_cumprod[t])
    x_t = ab ** 0.5 * clean + (1 - ab) ** 0.5 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    s, m = prior.multiple, 8  # shift, margin ignored at the borders
    a = prior.eps(x_t[..., 0:45, 0:37], t)
    b = prior.eps(x_t[..., s:45 + s, s:37 + s], t)
    ia, ib = a[..., s + m:45 - m, s + m:37 - m], b[..., m:45 - s - m, m:37 - s - m]
    rel = float((ia - ib).abs().max() / a.abs().max())
    assert rel < 0.05, rel


def test_training_runs_saves_and_reloads(tmp_path):
    """Three training steps on synthetic slices: patches in range, loss logged, weights load back."""
    from models.train_prior import PatchSampler, TrainConfig, train, write_loss_curve

    slices = [np.asarray(TINY.model_to_suv(_smooth_image(70, 66, s)[0, 0].numpy())) * 3 for s in range(4)]
    cfg = TrainConfig(steps=3, batch_size=2, log_every=1, warmup_steps=1)
    patches = PatchSampler(slices, TINY, cfg, seed=0).batch(5)
    assert patches.shape == (5, 1, 64, 64) and patches.min() >= -1 and patches.max() <= 1
    rows: list[dict] = []
    net, done = train(slices, slices, TINY, cfg, rows)
    assert done == 3 and len(rows) == 3 and all(np.isfinite(r["train_loss"]) for r in rows)
    save_score_network(net, ModelRecord(network=TINY), tmp_path)
    write_loss_curve(rows, tmp_path)
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert DiffusionPrior(tmp_path).eps(_smooth_image(16, 16), 10).shape == (1, 1, 16, 16)


def test_training_refuses_evaluation_seeds():
    from models.train_prior import load_volumes

    with pytest.raises(ValueError, match="reserved for evaluation"):
        load_volumes(("demo",), [range(998, 1001)], count_level=10.0)


@pytest.mark.parametrize("gpu_run", [False, True])
def test_model_card_command_retrains_the_recorded_network(gpu_run):
    """The card's retraining command parses back to the recorded recipe: the shipped CPU run, and a GPU run
    of a wider network whose non-default options (device, batch, channels) must appear in it."""
    import dataclasses
    import shlex

    from models.train_prior import parser, train_command

    record = ModelRecord.from_json((DEFAULT_MODEL_DIR / CONFIG_FILE).read_text())
    if gpu_run:
        wider = dataclasses.replace(record.network, channels=(32, 64, 128, 128))
        record = dataclasses.replace(record, network=wider,
                                     training=record.training | {"device": "cuda", "batch_size": 64})
    words = shlex.split(train_command(record))
    assert words[:3] == ["python", "-m", "models.train_prior"]
    args = parser().parse_args(words[3:])
    tr = record.training
    for key in ("steps", "seed", "minutes", "threads"):
        assert getattr(args, key) == tr[key]
    assert (args.device, args.batch_size) == (tr.get("device", "cpu"), tr["batch_size"])
    assert tuple(args.channels) == tuple(record.network.channels)
    assert ("--device" in words) == gpu_run
