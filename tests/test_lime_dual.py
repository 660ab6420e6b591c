"""LIME and DUAL: solvers against references, and what a user sees in the output."""

import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from skimage.metrics import peak_signal_noise_ratio

import dpe
from dpe.methods import create_method, get_method, illumination, method_info, multigrid
from dpe.methods.dual import dual, fuse_exposures
from dpe.methods.lime import illumination_weights, initial_illumination, lime, refine_illumination


def _textured(shape, low, high, seed=0):
    """Smooth shading plus texture and a step edge, in [low, high], float32 RGB."""
    rng = np.random.default_rng(seed)
    h, w = shape
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = 0.5 + 0.25 * np.sin(6 * x) * np.cos(4 * y) + 0.2 * (x > 0.5) - 0.1
    base += 0.05 * rng.standard_normal(shape)
    base = (base - base.min()) / (base.max() - base.min())
    tint = np.array([1.0, 0.85, 0.7])
    return (low + (high - low) * base[..., None] * tint).astype(np.float32)


def _speedup_system(t_hat, alpha=0.15, sigma=2.0, strategy=3, eps=1e-3):
    """(I + alpha sum_d D_d^T diag(W_d / (|D_d T_hat| + eps)) D_d), built from the paper."""
    h, w = t_hat.shape
    t = t_hat.astype(np.float64)
    wh, wv = illumination_weights(t_hat, strategy=strategy, sigma=sigma, eps=eps)

    def diff(n):  # forward differences, (n - 1) x n
        return sp.diags([-np.ones(n - 1), np.ones(n - 1)], [0, 1], shape=(n - 1, n))

    dh = sp.kron(sp.eye(h), diff(w))
    dv = sp.kron(diff(h), sp.eye(w))
    wt_h = wh.ravel() / (np.abs(dh @ t.ravel()) + eps)
    wt_v = wv.ravel() / (np.abs(dv @ t.ravel()) + eps)
    a = sp.eye(h * w) + alpha * (dh.T @ sp.diags(wt_h) @ dh + dv.T @ sp.diags(wt_v) @ dv)
    return a.tocsc()


@pytest.mark.parametrize(
    "t_hat",
    [
        np.random.default_rng(1).random((64, 64)),
        # Flat patches next to edges: the hard case (couplings from 0.1 to 1e5).
        np.kron(np.random.default_rng(2).random((4, 4)), np.ones((16, 16)))
        + 0.01 * np.random.default_rng(3).random((64, 64)),
        _textured((57, 45), 0.02, 0.4)[..., 0],
    ],
    ids=["random", "blocks", "odd-shape"],
)
def test_fast_solver_matches_spsolve(t_hat, monkeypatch):
    # Shrink the direct-solve threshold so that these small grids go through the multigrid.
    monkeypatch.setattr(multigrid, "_COARSEST_SIZE", 100)
    t_hat = np.clip(t_hat, 0, 1).astype(np.float32)
    expected = spla.spsolve(_speedup_system(t_hat), t_hat.astype(np.float64).ravel())
    got = refine_illumination(t_hat, solver="fast")
    assert got.dtype == np.float32
    rel_err = np.linalg.norm(got.ravel() - expected) / np.linalg.norm(expected)
    assert rel_err <= 1e-4


def _chambolle_pock(t_hat, wh, wv, alpha, iters):
    """Long-run reference for the exact objective, by a different algorithm.

    Accelerated primal-dual (Chambolle & Pock 2011, Alg. 2; the data term is 2-strongly
    convex). Returns T and a lower bound on the optimum from the dual iterate.
    """

    def grad(t):
        return np.roll(t, -1, axis=1) - t, np.roll(t, -1, axis=0) - t

    def grad_t(ph, pv):
        return (np.roll(ph, 1, axis=1) - ph) + (np.roll(pv, 1, axis=0) - pv)

    tau = sigma = 1 / np.sqrt(8)  # ||grad||^2 <= 8
    t = t_hat.copy()
    t_bar = t.copy()
    ph, pv = np.zeros_like(t), np.zeros_like(t)
    for _ in range(iters):
        gh, gv = grad(t_bar)
        ph = np.clip(ph + sigma * gh, -alpha * wh, alpha * wh)
        pv = np.clip(pv + sigma * gv, -alpha * wv, alpha * wv)
        t_old = t
        t = (t - tau * grad_t(ph, pv) + 2 * tau * t_hat) / (1 + 2 * tau)
        theta = 1 / np.sqrt(1 + 4 * tau)
        tau, sigma = tau * theta, sigma / theta
        t_bar = t + theta * (t - t_old)
    q = grad_t(ph, pv)  # dual value for a feasible p: <D^T p, T_hat> - ||D^T p||^2 / 4
    return t, float((q * t_hat).sum() - (q**2).sum() / 4)


def test_fast_solver_warns_when_it_runs_out_of_iterations():
    t_hat = _textured((96, 96), 0.02, 0.4)[..., 0]
    with pytest.warns(RuntimeWarning, match="max_iter=1"):
        refine_illumination(t_hat, max_iter=1)


def test_exact_solver_decreases_objective_to_long_run_optimum():
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:48, 0:48] / 48
    # Steps strong enough that the optimum is not a constant map.
    t_hat = 0.1 + 0.5 * (x > 0.5) + 0.3 * (y > 0.7) * (x < 0.3) + 0.1 * y
    t_hat = np.clip(t_hat + 0.02 * rng.standard_normal((48, 48)), 0, 1)
    wh, wv = illumination_weights(t_hat, strategy=3, periodic=True)

    def objective(t):
        return illumination._objective(t, t_hat, wh, wv, 0.15)

    history = []
    t, n_iter = illumination._solve_exact(
        t_hat, wh, wv, 0.15, callback=lambda k, t: history.append(objective(t))
    )
    reference, lower_bound = _chambolle_pock(t_hat, wh, wv, 0.15, iters=5000)
    history = np.array(history)
    assert history[-1] < 0.8 * objective(np.full_like(t_hat, t_hat.mean()))
    # ADMM's first few steps overshoot; after them the objective only wiggles down.
    warm = n_iter // 10
    running_min = np.minimum.accumulate(history[warm:])
    assert np.all(history[warm + 1 :] <= running_min[:-1] * 1.02)
    assert history[-1] < history[warm]
    assert lower_bound <= history[-1] <= 1.01 * objective(reference)
    assert history[-1] <= 1.01 * lower_bound  # within 1% of the true optimum
    # The public entry point runs the same solver.
    public = refine_illumination(t_hat.astype(np.float32), solver="exact")
    np.testing.assert_allclose(public, np.clip(t, 0, 1), atol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
@pytest.mark.parametrize("solver", ["fast", "exact"])
def test_lime_brightens_dark_image(dtype, solver):
    dark = _textured((40, 48), 0.02, 0.25)
    image = (dark * 255).round().astype(np.uint8) if dtype == np.uint8 else dark.astype(dtype)
    out = lime(image, solver=solver, denoise=False)
    assert out.dtype == np.float32 and out.shape == (40, 48, 3)
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.mean() > 1.5 * dark.mean()
    # Brightening keeps the order of intensities: the darkest input pixel stays darker than
    # the brightest.
    lum_in, lum_out = dark.mean(axis=2), out.mean(axis=2)
    assert lum_out.ravel()[lum_in.argmin()] < lum_out.ravel()[lum_in.argmax()]


@pytest.mark.parametrize("strategy", [1, 2, 3])
def test_every_weighting_strategy_brightens(strategy):
    dark = _textured((32, 32), 0.02, 0.25)
    out = lime(dark, strategy=strategy, denoise=False)
    assert np.isfinite(out).all() and out.mean() > 1.5 * dark.mean()


def test_dual_leaves_well_exposed_image_nearly_unchanged():
    image = _textured((48, 64), 0.3, 0.75)
    out = dual(image, denoise=False)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert peak_signal_noise_ratio(image, out, data_range=1.0) >= 25.0


def test_dual_fixes_under_and_over_exposed_regions():
    under = _textured((48, 32), 0.01, 0.12, seed=1)
    over = _textured((48, 32), 0.88, 0.99, seed=2)
    image = np.concatenate([under, over], axis=1)
    out = dual(image, denoise=False)
    assert out.min() >= 0.0 and out.max() <= 1.0
    left, right = out[:, :32], out[:, 32:]
    assert left.mean() > 2 * image[:, :32].mean()  # the dark half is brighter
    assert right.mean() < image[:, 32:].mean() - 0.04  # the bright half is darker
    # Detail becomes more visible in both regions.
    assert left.std() > 2 * image[:, :32].std()
    assert right.std() > 2 * image[:, 32:].std()


@pytest.mark.parametrize("method", ["lime", "dual"])
def test_grayscale_input(method):
    gray = (_textured((32, 40), 0.02, 0.3)[..., 0] * 255).astype(np.uint8)  # (H, W) uint8
    out = dpe.enhance(gray, method, denoise=False)
    assert out.shape == (32, 40, 3)
    # OpenCV's exposure fusion is parallel and reproducible only to float32 rounding.
    np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-6)
    np.testing.assert_allclose(out[..., 0], out[..., 2], atol=1e-6)
    assert out.mean() > gray.mean() / 255


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("method", ["lime", "dual"])
@pytest.mark.parametrize("solver", ["fast", "exact"])
def test_constant_image_gives_finite_output(value, method, solver):
    image = np.full((20, 24, 3), value, np.float32)
    out = dpe.enhance(image, method, solver=solver, denoise=False)
    assert np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.ptp(out) < 1e-3  # a flat image stays flat


def test_refined_illumination_of_constant_map_is_that_constant():
    np.testing.assert_allclose(refine_illumination(np.full((70, 80), 0.3)), 0.3, atol=1e-5)
    assert initial_illumination(np.zeros((3, 4))).max() == 0.0


@pytest.mark.parametrize("method", ["lime", "dual"])
def test_denoise_option_is_honoured(method):
    rng = np.random.default_rng(5)
    image = np.clip(_textured((48, 48), 0.03, 0.2) + rng.normal(0, 0.01, (48, 48, 1)), 0, 1)
    plain = dpe.enhance(image, method, denoise=False)
    denoised = dpe.enhance(image, method)  # denoising is on by default
    assert not np.allclose(plain, denoised, atol=1e-3)

    def roughness(im):  # mean absolute Laplacian of the luma
        y = im.mean(axis=2)
        return np.abs(4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:])

    assert roughness(denoised).mean() < 0.9 * roughness(plain).mean()
    np.testing.assert_allclose(
        create_method(method, denoise=False).enhance(image), plain, atol=1e-6
    )


def test_denoising_falls_back_to_non_local_means_without_bm3d(monkeypatch):
    monkeypatch.setitem(sys.modules, "bm3d", None)  # makes "import bm3d" raise ImportError
    rng = np.random.default_rng(6)
    image = np.clip(_textured((40, 40), 0.03, 0.2) + rng.normal(0, 0.01, (40, 40, 1)), 0, 1)
    with pytest.warns(UserWarning, match="bm3d is not installed"):
        denoised = lime(image)
    plain = lime(image, denoise=False)
    assert np.abs(np.diff(denoised, axis=1)).mean() < 0.9 * np.abs(np.diff(plain, axis=1)).mean()


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (8, 8), (15, 40)])
@pytest.mark.parametrize("method", ["lime", "dual"])
def test_tiny_images(shape, method):
    image = np.random.default_rng(0).random((*shape, 3)).astype(np.float32) * 0.3
    for solver in ("fast", "exact"):
        out = dpe.enhance(image, method, solver=solver)  # denoising on: skipped when this small
        assert out.shape == image.shape and np.isfinite(out).all()


@pytest.mark.parametrize("method", ["lime", "dual"])
@pytest.mark.parametrize(
    "options",
    [
        {"alpha": -1.0},
        {"alpha": float("nan")},
        {"sigma": 0.0},
        {"gamma": 0},
        {"strategy": 4},
        {"strategy": True},
        {"solver": "slow"},
        {"denoise": "yes"},
        {"eps": 0.0},
        {"lambda_": 0.15},
    ],
)
def test_bad_option_raises_value_error(method, options):
    image = np.full((8, 8, 3), 0.2, np.float32)
    with pytest.raises(ValueError, match=next(iter(options)).rstrip("_")):
        get_method(method).enhance(image, **options)


def test_bad_input_raises_value_error():
    with pytest.raises(ValueError, match="shape"):
        lime(np.zeros((8, 8, 4)), denoise=False)
    with pytest.raises(ValueError, match="t_hat"):
        refine_illumination(np.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match="max_iter"):
        refine_illumination(np.zeros((8, 8)), max_iter=0)
    with pytest.raises(ValueError, match="unknown option"):
        create_method("dual", beta=1)


def test_registered_as_classic_and_thread_safe():
    assert method_info("lime")["kind"] == "classic"
    assert method_info("dual")["kind"] == "classic"
    images = [_textured((40, 40), 0.02, 0.3, seed=s) for s in range(4)]
    serial = [get_method("dual").enhance(im, denoise=False) for im in images]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda im: get_method("dual").enhance(im, denoise=False), images))
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_fusing_identical_exposures_returns_the_image():
    image = _textured((24, 24), 0.1, 0.9)
    np.testing.assert_allclose(fuse_exposures([image, image, image]), image, atol=1e-5)
