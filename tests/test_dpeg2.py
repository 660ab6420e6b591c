"""DPE-G v2: identity at the start, channel-symmetric global correction, its global stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpe.degrade import degrade
from dpe.nets import build_net
from dpe.nets.dpeg2 import DPEG2, global_features


def _net(width: int = 8) -> DPEG2:
    torch.manual_seed(0)
    return build_net({"arch": "dpeg2", "width": width})


def test_an_untrained_model_is_the_identity():
    x = torch.rand(2, 3, 40, 56)
    with torch.no_grad():
        assert torch.allclose(_net()(x), x, atol=1e-6)


def test_global_correction_is_channel_symmetric_and_undoes_an_affine_loss():
    net = _net()
    with torch.no_grad():
        net.glob.mlp[-1].bias.copy_(torch.tensor([np.log(2.0), 0.0]))  # gain 2 about the mean
        x = torch.rand(1, 3, 32, 32) * 0.5 + 0.25
        params = net.global_params(x)
        out = net.apply_global(x, params)
    mean = params[0, 0]
    assert torch.allclose(out, ((x - mean) * 2 + mean).clamp(0, 1), atol=1e-5)
    gray = x[:, :1].expand(1, 3, 32, 32)
    with torch.no_grad():
        g = net(gray)
    assert torch.equal(g[:, 0], g[:, 1]) and torch.equal(g[:, 1], g[:, 2])


def test_features_read_exposure_not_size():
    rng = np.random.default_rng(0)
    big = torch.from_numpy(rng.random((1, 3, 512, 512), dtype=np.float32))
    small = big[..., ::4, ::4]
    assert global_features(big).shape == (1, global_features(small).shape[1])
    assert torch.allclose(global_features(big), global_features(small), atol=0.05)


def test_mild_preset_is_gentler_than_paper():
    clean = np.random.default_rng(1).random((32, 32, 3), dtype=np.float32)
    mild = [np.abs(degrade(clean, "mild", seed=s) - clean).mean() for s in range(20)]
    paper = [np.abs(degrade(clean, "paper", seed=s) - clean).mean() for s in range(20)]
    assert np.mean(mild) < np.mean(paper) / 2


@pytest.mark.slow
def test_global_stage_learns_exports_and_resumes(tmp_path, monkeypatch):

    from dpe import train_global
    from dpe.weights import load_weights

    _tiny_data(tmp_path, monkeypatch, ("radiology", "microscopy"), (6, 2), side=64, seed=0)
    config = train_global.GlobalConfig(
        data=str(tmp_path / "data"),
        width=8,
        crop=32,
        batch_size=8,
        steps=40,
        eval_every=20,
        out_dir=str(tmp_path / "out"),
        checkpoint_dir=str(tmp_path / "ck"),
    )
    first = train_global.train_global(config)
    state, net_config, info = load_weights(tmp_path / "out" / "dpe-g.safetensors")
    assert net_config["arch"] == "dpeg2" and info["val_worst_psnr"] == pytest.approx(
        first["best"], abs=1e-3
    )
    assert first["best"] > info["val_history"][0][1]  # it learned something over the identity
    config.steps, config.resume = 60, True
    config.features = 1  # the command line differs: the checkpoint's network is kept
    assert train_global.train_global(config)["step"] == 60
    assert config.features == 2


def _tiles(folder):
    from dpe.train import load_tiles

    return load_tiles(folder, by_source=False)


def _tiny_data(tmp_path, monkeypatch, groups, counts, *, side, seed):
    """Random train/val PNGs under tmp_path/data, one source per group, for train_global."""
    from PIL import Image

    from dpe import train_global

    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val"), counts, strict=True):
        for group in groups:
            folder = tmp_path / "data" / split / group
            folder.mkdir(parents=True)
            for k in range(n):
                img = (rng.random((side, side, 3)) * 200 + 40).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{group}_{k}.png")
    (tmp_path / "data" / "manifest.csv").write_text("path,source\n")  # one source per group
    monkeypatch.setattr(train_global, "load_tiles", lambda folder, by_source: _tiles(folder))


def test_feature_versions_build_and_start_as_the_identity():
    x = torch.rand(1, 3, 48, 48) * 0.3 + 0.1
    for version, n in ((1, 27), (2, 31), (3, 41)):
        net = build_net({"arch": "dpeg2", "width": 8, "features": version})
        assert global_features(x, version).shape == (1, n)
        with torch.no_grad():
            assert torch.allclose(net(x), x, atol=1e-6)
    # version 2 carries log(span): halving the contrast moves it by log(2)/3
    a, b = global_features(x, 2)[0, -4], global_features((x - 0.25) * 0.5 + 0.25, 2)[0, -4]
    assert float(a - b) == pytest.approx(np.log(2) / 3, abs=1e-3)


def test_tail_features_see_a_clipped_white_through_the_degradation():
    from dpe.degrade import degrade
    from dpe.methods.classic import autocontrast

    ramp = np.linspace(0.1, 0.7, 128, dtype=np.float32)
    clean = np.repeat(np.add.outer(ramp, ramp)[..., None] / 1.4, 3, axis=2)  # thin tails
    clipped = autocontrast(clean, low=0.5, high=98.0)  # 2% of it at exactly white

    def top_gap(image):  # (max - 99th percentile) / span after a paper degradation, 8 seeds
        gaps = []
        for seed in range(8):
            x = torch.from_numpy(degrade(image, "paper", seed=seed)).permute(2, 0, 1)[None]
            gaps.append(float(global_features(x, 3)[0, 31 + 3]))  # TAILS[3] = 0.01, top
        return np.mean(gaps)

    assert top_gap(clipped) < 0.5 * top_gap(clean)


def test_an_untrained_local_path_is_skipped_at_inference_only():
    net = _net().eval()
    calls = []
    net.local.register_forward_hook(lambda *a: calls.append(1))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        net(x)
    assert calls == [] and net.local_is_zero()
    net.train()
    net(x)  # training must run it, or its zero output convolution would never learn
    assert calls == [1]
    with torch.no_grad():
        net.local.conv_out.bias.fill_(0.01)
    net.eval()
    with torch.no_grad():
        net(x)
    assert calls == [1, 1] and not net.local_is_zero()


def test_stretch_head_starts_as_the_identity_and_sends_quantiles_where_it_says():
    x = torch.rand(1, 3, 64, 64) * 0.2 + 0.3  # a low-contrast image
    net = build_net({"arch": "dpeg2", "width": 8, "features": 2, "head": "stretch"})
    with torch.no_grad():
        assert torch.allclose(net(x), x, atol=1e-6)
        # ask for the 0.5% quantile to go 0.2 lower and the 99.5% one 0.3 higher
        net.glob.mlp[-1].bias.copy_(torch.tensor([-0.2, 0.3]))
        out = net(x)
    luma = lambda t: (t * t.new_tensor((0.299, 0.587, 0.114)).view(1, 3, 1, 1)).sum(1)  # noqa: E731
    q = torch.tensor([0.005, 0.995])
    before, after = torch.quantile(luma(x).flatten(), q), torch.quantile(luma(out).flatten(), q)
    assert torch.allclose(after, before + torch.tensor([-0.2, 0.3]), atol=0.01)
    with pytest.raises(ValueError, match="head"):
        build_net({"arch": "dpeg2", "head": "bogus"})


def test_rewindow_stretches_a_narrow_tile_to_the_full_range_and_keeps_gray_gray():
    from dpe.training.samples import crop_of_degraded_tile, rewindow

    rng = np.random.default_rng(0)
    ramp = np.linspace(0.2, 0.5, 64 * 64, dtype=np.float32).reshape(64, 64, 1)
    gray = np.repeat(ramp, 3, axis=2)
    out = rewindow(gray, rng)
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    assert np.all(np.diff(out[..., 0].ravel()) >= 0)  # monotone: a window, not a remap
    flat = np.full((8, 8, 3), 0.4, np.float32)
    assert np.array_equal(rewindow(flat, rng), flat)  # nothing to stretch
    tile = (gray * 255).astype(np.uint8)
    low, clean, whole = crop_of_degraded_tile(tile, 32, None, rng, rewindowed=True)
    assert np.array_equal(low, clean) and whole.min() == 0.0
    assert whole.max() == pytest.approx(1.0, abs=1e-6)  # luma of gray is v x 0.9999999 in fp32
    _, _, plain = crop_of_degraded_tile(tile, 32, None, rng)
    assert plain.max() <= 0.5 + 1 / 255


def test_init_from_a_smaller_feature_set_starts_as_that_model(tmp_path):
    from dpe.train_global import init_global_path
    from dpe.weights import load_weights, save_weights

    _, config, _ = load_weights("weights/dpe-g.safetensors")
    torch.manual_seed(0)
    small = build_net({**config, "features": 2})  # the feature set the shipped file grew from
    path = tmp_path / "small.safetensors"
    save_weights(small.state_dict(), path, {**config, "features": 2})
    grown = build_net({**config, "features": 3})
    init_global_path(grown, path)
    grown.local.load_state_dict(small.local.state_dict())
    x = torch.rand(2, 3, 40, 40) * 0.4 + 0.05
    with torch.no_grad():
        assert torch.allclose(grown(x, local=False), small(x, local=False), atol=1e-6)
        assert grown.glob.mlp[0].weight[:, 31:].abs().max() == 0
        assert small.glob.mlp[0].weight.abs().max() > 0
    with pytest.raises(ValueError, match="more features"):
        init_global_path(build_net({**config, "features": 1}), path)


def test_windowed_validation_adds_full_range_views_of_gray_images_only(tmp_path):
    from PIL import Image

    from dpe.train_global import load_val

    ramp = np.linspace(60, 160, 48, dtype=np.float32)
    gray = np.add.outer(ramp, ramp) / 2
    (tmp_path / "radiology").mkdir()
    (tmp_path / "dermatology").mkdir()
    Image.fromarray(gray.astype(np.uint8)).save(tmp_path / "radiology" / "a.png")
    colour = np.stack([gray, gray * 0.8, gray * 0.6], axis=2).astype(np.uint8)
    Image.fromarray(colour).save(tmp_path / "dermatology" / "b.png")
    plain = {key for key, _, _ in load_val(tmp_path)}
    assert plain == {
        f"{g}/{k}" for g in ("radiology", "dermatology") for k in ("degraded", "clean")
    }
    val = load_val(tmp_path, windowed=True)
    keys = [key for key, _, _ in val]
    assert set(keys) - plain == {"radiology-windowed/degraded", "radiology-windowed/clean"}
    windowed = next(clean for key, _, clean in val if key == "radiology-windowed/clean")
    assert gray.max() / 255 < 0.7 and np.quantile(windowed, 0.999) == pytest.approx(1.0)
    assert np.quantile(windowed, 0.001) == pytest.approx(0.0)


def test_keep_start_blocks_a_step_that_loses_a_group_to_step_0():
    from types import SimpleNamespace

    from dpe.train_global import GlobalRun

    start = {"radiology/clean": 42.0, "radiology/degraded": 20.0}
    run = SimpleNamespace(config=SimpleNamespace(keep_start=0.1), history=[])
    assert GlobalRun.eligible(run, start)  # step 0 itself
    run.history = [[0, 20.0, start]]
    better = {"radiology/clean": 41.95, "radiology/degraded": 25.0}
    assert GlobalRun.eligible(run, better)
    assert not GlobalRun.eligible(run, {**better, "radiology/clean": 41.8})
    run.config.keep_start = None  # the plain worst-group rule
    assert GlobalRun.eligible(run, {**better, "radiology/clean": 30.0})


def test_rewindow_clip_sets_how_many_pixels_a_window_clips_at_each_end():
    from dpe.training.samples import rewindow

    ramp = np.linspace(0.2, 0.5, 100 * 100, dtype=np.float32).reshape(100, 100, 1)
    gray = np.repeat(ramp, 3, axis=2)
    shares = []
    for seed in range(40):
        out = rewindow(gray, np.random.default_rng(seed), clip=5.0)[..., 0]
        shares.append(((out == 1.0).mean(), (out == 0.0).mean()))
    white, black = np.array(shares).T
    assert white.max() <= 0.051 and black.max() <= 0.051
    assert white.max() > 0.03 and black.max() > 0.03  # the default (1%) never clips this much
    narrow = [rewindow(gray, np.random.default_rng(s))[..., 0] for s in range(40)]
    assert max((o == 1.0).mean() for o in narrow) <= 0.011


def test_ema_is_what_is_validated_exported_and_resumed(tmp_path, monkeypatch):

    from dpe import train_global
    from dpe.weights import load_weights

    _tiny_data(tmp_path, monkeypatch, ("radiology",), (4, 1), side=48, seed=1)
    config = train_global.GlobalConfig(
        data=str(tmp_path / "data"),
        width=8,
        crop=32,
        batch_size=4,
        steps=6,
        eval_every=3,
        ema=0.5,
        lr=1e-2,
        out_dir=str(tmp_path / "out"),
        checkpoint_dir=str(tmp_path / "ck"),
    )
    run = train_global.GlobalRun(config)
    start = {k: v.clone() for k, v in run.model.glob.state_dict().items()}
    for _ in range(3):
        run.take_step()
    model, ema = run.model.glob.state_dict(), run.ema.glob.state_dict()
    key = next(k for k in model if k.endswith("weight"))
    # decay 0.5 over three steps: the average sits strictly between the start and the model
    assert not torch.equal(ema[key], model[key]) and not torch.equal(ema[key], start[key])
    run.best = -float("inf")
    run.evaluate()
    state, _, info = load_weights(tmp_path / "out" / "dpe-g.safetensors")
    exported = state["glob." + key].float()
    assert torch.allclose(exported, ema[key], atol=1e-3)  # fp16 file
    assert "EMA" in info["training"]
    run.save()
    config.resume = True
    again = train_global.GlobalRun(config)
    assert torch.equal(again.ema.glob.state_dict()[key], ema[key])
