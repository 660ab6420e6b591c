"""LIME: low-light enhancement by illumination map estimation.

Guo, Li & Ling, "LIME: Low-Light Image Enhancement via Illumination Map Estimation",
IEEE Transactions on Image Processing 26(2), 2017.

The initial illumination is the per-pixel maximum over R, G and B. It is refined by minimising

    ||T_hat - T||^2 + alpha * sum_d ||W_d o D_d T||_1,    d in {horizontal, vertical},

with either of the paper's two solvers:

- ``"exact"``: ADMM. The T-subproblem is solved in closed form with 2-D FFTs (periodic
  boundaries), the G-subproblem by soft-thresholding, and the penalty mu grows by rho each step.
- ``"fast"`` (the paper's sped-up solver): the l1 term is replaced by a weighted l2 term, which
  leaves one symmetric 5-point system (I + alpha * sum_d D_d^T diag(W~_d) D_d) t = t_hat with
  W~_d = W_d / (|D_d T_hat| + eps) (Neumann boundaries). It is solved by conjugate gradients
  preconditioned with a geometric multigrid built for this operator (see ``_Multigrid``).

The enhanced image is R = L / T^gamma, optionally denoised with BM3D on the luma of R and
recomposed as R o T^gamma + R_denoised o (1 - T^gamma), as in the paper.
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy import ndimage
from scipy.linalg.lapack import dpttrf, dpttrs

from dpe._image import as_rgb_float, luminance
from dpe.methods import FunctionMethod, register_method

__all__ = [
    "denoise_recompose",
    "illumination_weights",
    "initial_illumination",
    "lime",
    "refine_illumination",
]

SOLVERS = ("fast", "exact")
STRATEGIES = (1, 2, 3)

# Grids with at most this many pixels are solved directly (sparse LU) instead of by multigrid.
_COARSEST_SIZE = 4096
# BM3D raises on images under 8 pixels on a side and segfaults at exactly 8 (bm3d 4.0.3).
_MIN_DENOISE_SIZE = 16


# ---------------------------------------------------------------------------------------------
# Public functions


def initial_illumination(image: np.ndarray) -> np.ndarray:
    """Initial illumination T_hat: the maximum over R, G and B, float32 (H, W) in [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> initial_illumination(np.array([[[0.1, 0.5, 0.2]]], dtype=np.float32))
    array([[0.5]], dtype=float32)
    """
    image = as_rgb_float(image)
    return image.max(axis=2)


def illumination_weights(
    t_hat: np.ndarray,
    *,
    strategy: int = 3,
    sigma: float = 2.0,
    eps: float = 1e-3,
    periodic: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Weights W_h, W_v of the paper's strategy I, II or III, on the edges between pixels.

    Strategy I is all ones; II is 1 / (|grad T_hat| + eps); III is
    1 / (|G_sigma * grad T_hat| + eps) with a normalised Gaussian G_sigma. With
    ``periodic=False`` the horizontal weights have shape (H, W - 1) and the vertical ones
    (H - 1, W); with ``periodic=True`` both are (H, W) and include the wrap-around edges.

    Examples
    --------
    >>> import numpy as np
    >>> wh, wv = illumination_weights(np.zeros((4, 5), np.float32), strategy=2)
    >>> wh.shape, wv.shape, float(wh[0, 0])
    ((4, 4), (3, 5), 1000.0)
    """
    t_hat = _check_map(t_hat, "t_hat")
    _check_strategy(strategy)
    _check_positive(eps, "eps")
    if strategy == 3:
        _check_positive(sigma, "sigma")
    gh, gv = _gradients(t_hat.astype(np.float64), periodic)
    return _weights(gh, gv, strategy, sigma, eps, periodic)


def refine_illumination(
    t_hat: np.ndarray,
    *,
    alpha: float = 0.15,
    sigma: float = 2.0,
    strategy: int = 3,
    solver: str = "fast",
    eps: float = 1e-3,
    tol: float | None = None,
    max_iter: int | None = None,
) -> np.ndarray:
    """Refined illumination T from T_hat, float32 (H, W) in [0, 1].

    ``solver="fast"`` solves the sped-up linear system to an estimated relative error ``tol``
    (default 1e-4); ``solver="exact"`` runs ADMM on the l1 objective until
    ||grad T - G|| <= tol * ||T_hat|| (default 1e-7) or ``max_iter`` steps (default 100 fast,
    500 exact).

    Examples
    --------
    >>> import numpy as np
    >>> t = refine_illumination(np.full((8, 8), 0.25, np.float32))
    >>> bool(np.allclose(t, 0.25))
    True
    """
    t_hat = _check_map(t_hat, "t_hat")
    _check_solver_options(alpha, sigma, strategy, solver, eps)
    if tol is not None:
        _check_positive(tol, "tol")
    if max_iter is not None and (not isinstance(max_iter, int | np.integer) or max_iter < 1):
        raise ValueError(f"max_iter must be a positive integer; got {max_iter!r}.")
    return _refine(t_hat, alpha, sigma, strategy, solver, eps, tol, max_iter)


def lime(
    image: np.ndarray,
    *,
    alpha: float = 0.15,
    sigma: float = 2.0,
    gamma: float = 0.7,
    strategy: int = 3,
    solver: str = "fast",
    denoise: bool = True,
    eps: float = 1e-3,
) -> np.ndarray:
    """Enhance a low-light image with LIME; returns float32 (H, W, 3) in [0, 1].

    Defaults are the authors' demo settings (alpha 0.15, strategy III with sigma 2, gamma 0.7,
    sped-up solver). ``eps`` is both the paper's epsilon in the weights and the floor applied
    to T before dividing. ``denoise`` runs BM3D on the luma of the result, weighted towards the
    dark regions that were amplified most.

    Examples
    --------
    >>> import numpy as np
    >>> dark = np.full((16, 16, 3), 0.1, np.float32)
    >>> bool(lime(dark, denoise=False).mean() > dark.mean())
    True
    """
    image = as_rgb_float(image)
    _check_solver_options(alpha, sigma, strategy, solver, eps)
    _check_positive(gamma, "gamma")
    enhanced, t_gamma = _lime(image, alpha, sigma, gamma, strategy, solver, eps)
    if _check_bool(denoise, "denoise"):
        enhanced = denoise_recompose(enhanced, t_gamma)
    return enhanced


def denoise_recompose(enhanced: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Denoise the luma of ``enhanced`` and recompose as ``E o t + E_denoised o (1 - t)``.

    ``t`` in [0, 1] is the illumination that ``enhanced`` was divided by, so pixels that were
    amplified most take most of the denoised version. The denoiser is BM3D (``bm3d`` package),
    or scikit-image's non-local means with a warning if ``bm3d`` is not installed; its noise
    level is estimated from the finest diagonal Haar coefficients of the luma (median absolute
    deviation). Images under 16 pixels on a side are returned unchanged: BM3D works on 8x8
    blocks and crashes on smaller images. Returns float32 (H, W, 3) in [0, 1].
    """
    enhanced = as_rgb_float(enhanced, name="enhanced")
    t = _check_map(t, "t")
    if t.shape != enhanced.shape[:2]:
        raise ValueError(f"t must have shape {enhanced.shape[:2]}; got {t.shape}.")
    if min(t.shape) < _MIN_DENOISE_SIZE:
        return enhanced
    y = luminance(enhanced).astype(np.float64)
    noise = _estimate_noise(y)
    if noise < 1e-4:  # nothing to remove (and BM3D divides by the noise level)
        return enhanced
    y_denoised = _denoise_luma(y, noise)
    # Shifting R, G and B by the same amount changes Y by that amount and leaves Cb, Cr alone.
    shift = (y_denoised - y).astype(np.float32)[..., None]
    denoised = np.clip(enhanced + shift, 0.0, 1.0)
    w = t[..., None]
    return np.clip(enhanced * w + denoised * (1.0 - w), 0.0, 1.0).astype(np.float32)


def _denoise_luma(y: np.ndarray, noise: float) -> np.ndarray:
    try:
        import bm3d  # imported lazily: slow to import, and only needed here
    except ImportError:
        from skimage.restoration import denoise_nl_means

        warnings.warn(
            "bm3d is not installed; denoising with non-local means instead "
            "(pip install bm3d for the paper's denoiser).",
            stacklevel=3,
        )
        return denoise_nl_means(y, h=0.8 * noise, sigma=noise, fast_mode=True)
    return np.asarray(bm3d.bm3d(y, sigma_psd=noise), dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# Registry entry


@register_method("lime", label="LIME (Guo et al. 2017)", kind="classic")
def create_lime(**defaults) -> FunctionMethod:
    """Build the ``lime`` method; ``defaults`` are options of :func:`lime`."""
    return FunctionMethod("lime", "LIME (Guo et al. 2017)", lime, defaults)


# ---------------------------------------------------------------------------------------------
# Shared helpers (also used by dpe.methods.dual)


def _lime(image, alpha, sigma, gamma, strategy, solver, eps):
    """Checked-input LIME: (R = L / T^gamma clipped, T^gamma), both float32."""
    t = _refine(image.max(axis=2), alpha, sigma, strategy, solver, eps, None, None)
    t_gamma = np.power(np.maximum(t, np.float32(eps)), np.float32(gamma), dtype=np.float32)
    enhanced = np.clip(image / t_gamma[..., None], 0.0, 1.0)
    return enhanced.astype(np.float32, copy=False), t_gamma


def _check_map(t_hat, name) -> np.ndarray:
    arr = np.asarray(t_hat)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty (H, W) array; got shape {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
        raise ValueError(f"{name} must contain finite numbers in [0, 1].")
    return np.clip(arr.astype(np.float32, copy=False), 0.0, 1.0)


def _check_positive(value, name) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise ValueError(f"{name} must be a positive number; got {value!r}.")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number; got {value!r}.")


def _check_bool(value, name) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be True or False; got {value!r}.")
    return bool(value)


def _check_strategy(strategy) -> None:
    if isinstance(strategy, bool) or strategy not in STRATEGIES:
        raise ValueError(
            f"strategy must be 1, 2 or 3 (the paper's weighting strategies I-III); "
            f"got {strategy!r}."
        )


def _check_solver_options(alpha, sigma, strategy, solver, eps) -> None:
    _check_positive(alpha, "alpha")
    _check_strategy(strategy)
    if strategy == 3:
        _check_positive(sigma, "sigma")
    _check_positive(eps, "eps")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}; got {solver!r}.")


def _refine(t_hat, alpha, sigma, strategy, solver, eps, tol, max_iter) -> np.ndarray:
    t_hat64 = t_hat.astype(np.float64)
    if solver == "fast":
        gh, gv = _gradients(t_hat64, periodic=False)
        wh, wv = _weights(gh, gv, strategy, sigma, eps, periodic=False)
        # W~ = W / (|grad T_hat| + eps): the weighted-l2 stand-in for the l1 term.
        ah = alpha * wh / (np.abs(gh) + eps)
        av = alpha * wv / (np.abs(gv) + eps)
        t = _solve_fast(t_hat64, ah, av, 1e-4 if tol is None else tol, max_iter or 100)
    else:
        gh, gv = _gradients(t_hat64, periodic=True)
        wh, wv = _weights(gh, gv, strategy, sigma, eps, periodic=True)
        t, _ = _solve_exact(
            t_hat64, wh, wv, alpha, tol=1e-7 if tol is None else tol, max_iter=max_iter or 500
        )
    return np.clip(t, 0.0, 1.0).astype(np.float32)


def _gradients(t: np.ndarray, periodic: bool) -> tuple[np.ndarray, np.ndarray]:
    """Forward differences: horizontal and vertical, on edges (or wrapping round if periodic)."""
    if periodic:
        return np.roll(t, -1, axis=1) - t, np.roll(t, -1, axis=0) - t
    return np.diff(t, axis=1), np.diff(t, axis=0)


def _weights(gh, gv, strategy, sigma, eps, periodic):
    if strategy == 1:
        return np.ones_like(gh), np.ones_like(gv)
    if strategy == 2:
        return 1.0 / (np.abs(gh) + eps), 1.0 / (np.abs(gv) + eps)
    mode = "wrap" if periodic else "reflect"
    # A normalised Gaussian makes the paper's numerator (the sum of G_sigma) equal to one.
    sh = ndimage.gaussian_filter(gh, sigma, mode=mode)
    sv = ndimage.gaussian_filter(gv, sigma, mode=mode)
    return 1.0 / (np.abs(sh) + eps), 1.0 / (np.abs(sv) + eps)


def _estimate_noise(y: np.ndarray) -> float:
    """Gaussian noise level from the finest diagonal Haar detail (Donoho's MAD estimator)."""
    h, w = (y.shape[0] // 2) * 2, (y.shape[1] // 2) * 2
    if h == 0 or w == 0:
        return 0.0
    y = y[:h, :w]
    d = (y[0::2, 0::2] - y[0::2, 1::2] - y[1::2, 0::2] + y[1::2, 1::2]) / 2.0
    return float(np.median(np.abs(d)) / 0.6745)


# ---------------------------------------------------------------------------------------------
# Exact solver: ADMM on the l1 objective


def _objective(t, t_hat, wh, wv, alpha) -> float:
    """||T_hat - T||^2 + alpha * ||W o grad T||_1 with periodic forward differences."""
    gh, gv = _gradients(t, periodic=True)
    return float(((t - t_hat) ** 2).sum() + alpha * (np.abs(wh * gh).sum() + np.abs(wv * gv).sum()))


def _solve_exact(t_hat, wh, wv, alpha, *, mu=None, rho=1.05, tol=1e-7, max_iter=500, callback=None):
    """ADMM for min ||T_hat - T||^2 + alpha ||W o grad T||_1 s.t. grad T = G.

    Returns (T, number of iterations); ``callback(k, T)`` is called after every iteration.
    Stops when ||grad T - G|| <= tol * ||T_hat||. Because mu only grows, ADMM settles where
    the constraint first holds, which is the optimum only if mu grows slowly: rho = 1.05 ends
    within 0.5% of the optimum on our test maps where rho = 1.2 ends up to 7% above it. mu
    starts at alpha * mean(W) / 10, on the scale of the weights, which span 1 (strategy I) to
    1 / eps (II, III).
    """
    if mu is None:
        mu = 0.1 * alpha * 0.5 * (float(wh.mean()) + float(wv.mean()))
    h, w = t_hat.shape
    # Periodic forward differences are diagonalised by the DFT: |F(d)|^2 = 2 - 2 cos(2 pi k / n).
    eig = (2.0 - 2.0 * np.cos(2.0 * np.pi * np.arange(h) / h))[:, None] + (
        2.0 - 2.0 * np.cos(2.0 * np.pi * np.arange(w // 2 + 1) / w)
    )[None, :]
    f_rhs = 2.0 * np.fft.rfft2(t_hat)
    gh = np.zeros_like(t_hat)
    gv = np.zeros_like(t_hat)
    zh = np.zeros_like(t_hat)
    zv = np.zeros_like(t_hat)
    norm_t_hat = max(float(np.sqrt((t_hat**2).sum())), 1e-12)
    t = t_hat
    for k in range(1, max_iter + 1):
        # T-step: (2 I + mu D^T D) T = 2 T_hat + mu D^T (G - Z / mu), solved in the Fourier domain.
        vh = gh - zh / mu
        vv = gv - zv / mu
        dtv = (np.roll(vh, 1, axis=1) - vh) + (np.roll(vv, 1, axis=0) - vv)
        t = np.fft.irfft2((f_rhs + mu * np.fft.rfft2(dtv)) / (2.0 + mu * eig), s=(h, w))
        # G-step: soft-thresholding of grad T + Z / mu at alpha W / mu.
        dh, dv = _gradients(t, periodic=True)
        gh = _shrink(dh + zh / mu, alpha * wh / mu)
        gv = _shrink(dv + zv / mu, alpha * wv / mu)
        # Multiplier and penalty updates.
        rh = dh - gh
        rv = dv - gv
        zh += mu * rh
        zv += mu * rv
        mu *= rho
        if callback is not None:
            callback(k, t)
        if np.sqrt((rh**2).sum() + (rv**2).sum()) <= tol * norm_t_hat:
            break
    return t, k


def _shrink(x, threshold):
    return np.sign(x) * np.maximum(np.abs(x) - threshold, 0.0)


# ---------------------------------------------------------------------------------------------
# Sped-up solver: (I + L) t = t_hat, where L is the 5-point graph Laplacian with edge weights
# ah (horizontal) and av (vertical).
#
# General-purpose algebraic multigrid (pyamg's smoothed aggregation) needs 15-45 iterations and
# seconds of setup at 1024^2 on these systems: strategy III makes the couplings jump by 1e5 and
# strongly anisotropic along image edges. This solver uses the grid instead:
# - 2x2 aggregation, whose Galerkin coarse operators are again 5-point (masses add up, and so do
#   the edges crossing between aggregates), so setup is a few array sums per level;
# - zebra line Gauss-Seidel (exact tridiagonal solves along rows, then along columns), which
#   copes with the anisotropy that defeats point smoothers;
# - a K-cycle (up to two flexible-CG steps per coarse level; Notay & Vassilevski, Numer. Linear
#   Algebra Appl. 2008), which makes plain aggregation converge independently of the depth;
# - flexible CG outside. 8-14 iterations reach a relative error below 1e-4.


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    # einsum, not BLAS: multithreaded BLAS level-1 calls stall badly on a busy CPU.
    return float(np.einsum("i,i->", a, b))


def _laplacian_csr(mass, ah, av) -> sp.csr_matrix:
    """CSR matrix diag(mass) + L for the 5-point Laplacian L with edge weights ah, av."""
    h, w = mass.shape
    n = h * w
    idx = np.arange(n, dtype=np.int32).reshape(h, w)
    cols = np.zeros((h, w, 5), np.int32)
    vals = np.zeros((h, w, 5), np.float64)
    keep = np.zeros((h, w, 5), bool)
    diag = mass.astype(np.float64, copy=True)
    diag[:, :-1] += ah
    diag[:, 1:] += ah
    diag[:-1] += av
    diag[1:] += av
    # Column order north, west, centre, east, south keeps each row sorted.
    cols[1:, :, 0], vals[1:, :, 0], keep[1:, :, 0] = idx[:-1], -av, True
    cols[:, 1:, 1], vals[:, 1:, 1], keep[:, 1:, 1] = idx[:, :-1], -ah, True
    cols[:, :, 2], vals[:, :, 2], keep[:, :, 2] = idx, diag, True
    cols[:, :-1, 3], vals[:, :-1, 3], keep[:, :-1, 3] = idx[:, 1:], -ah, True
    cols[:-1, :, 4], vals[:-1, :, 4], keep[:-1, :, 4] = idx[1:], -av, True
    indptr = np.zeros(n + 1, np.int32)
    np.cumsum(keep.sum(axis=2).ravel(), out=indptr[1:])
    return sp.csr_matrix((vals[keep], cols[keep], indptr), shape=(n, n))


def _coarsen(mass, ah, av):
    """Galerkin coarsening with 2x2 aggregates: masses add up, crossing edges add up."""
    h, w = mass.shape
    hc, wc = (h + 1) // 2, (w + 1) // 2
    m = np.zeros((2 * hc, 2 * wc))
    m[:h, :w] = mass
    a = np.zeros((2 * hc, 2 * wc))
    a[:h, : w - 1] = ah
    v = np.zeros((2 * hc, 2 * wc))
    v[: h - 1, :w] = av
    mass_c = m.reshape(hc, 2, wc, 2).sum(axis=(1, 3))
    ah_c = (a[0::2, 1::2] + a[1::2, 1::2])[:, : wc - 1]  # edges from column 2j+1 to 2j+2
    av_c = (v[1::2, 0::2] + v[1::2, 1::2])[: hc - 1]  # edges from row 2i+1 to 2i+2
    return mass_c, np.ascontiguousarray(ah_c), np.ascontiguousarray(av_c)


def _restrict(r: np.ndarray, shape) -> np.ndarray:
    h, w = shape
    hc, wc = (h + 1) // 2, (w + 1) // 2
    r = r.reshape(h, w)
    if h % 2 or w % 2:
        padded = np.zeros((2 * hc, 2 * wc))
        padded[:h, :w] = r
        r = padded
    return (r[0::2, 0::2] + r[0::2, 1::2] + r[1::2, 0::2] + r[1::2, 1::2]).ravel()


def _prolong_add(x: np.ndarray, e: np.ndarray) -> None:
    """x += P e, with P constant on each 2x2 aggregate (x is (H, W), e is flat coarse)."""
    h, w = x.shape
    hc, wc = (h + 1) // 2, (w + 1) // 2
    e = e.reshape(hc, wc)
    x[0::2, 0::2] += e[: (h + 1) // 2, : (w + 1) // 2]
    x[0::2, 1::2] += e[: (h + 1) // 2, : w // 2]
    x[1::2, 0::2] += e[: h // 2, : (w + 1) // 2]
    x[1::2, 1::2] += e[: h // 2, : w // 2]


class _ZebraRows:
    """Zebra line Gauss-Seidel along rows: even rows solved exactly (tridiagonal), then odd rows.

    ``diag`` is the full diagonal, ``ah`` the couplings along rows, ``av`` those between rows.
    """

    def __init__(self, diag, ah, av):
        h, w = diag.shape
        self.width = w
        av_pad = np.zeros((h + 1, w))  # av_pad[i]: edge between rows i - 1 and i
        av_pad[1:h] = av
        self.parities = []
        for p in (0, 1):
            n = len(range(p, h, 2))
            if n == 0:
                continue
            off = np.zeros((n, w))
            off[:, :-1] = -ah[p::2]
            d, e, info = dpttrf(diag[p::2].ravel(), off.ravel()[:-1])
            if info != 0:
                raise RuntimeError(f"tridiagonal factorisation failed (LAPACK info {info}).")
            north = np.ascontiguousarray(av_pad[p::2][:n])
            south = np.ascontiguousarray(av_pad[p + 1 :: 2][:n])
            self.parities.append((p, n, d, e, north, south))

    def sweep(self, xp, b, reverse=False):
        """One sweep over both parities; ``xp`` is x padded with a zero row above and below."""
        for p, n, d, e, north, south in reversed(self.parities) if reverse else self.parities:
            rhs = north * xp[p::2][:n]
            rhs += b[p::2]
            rhs += south * xp[p + 2 :: 2][:n]
            sol, _ = dpttrs(d, e, rhs.reshape(-1), overwrite_b=True)
            xp[1 + p :: 2][:n] = sol.reshape(n, self.width)


class _Level:
    def __init__(self, mass, ah, av):
        self.shape = mass.shape
        self.matrix = _laplacian_csr(mass, ah, av)
        diag = self.matrix.diagonal().reshape(self.shape)
        self.rows = _ZebraRows(diag, ah, av)
        self.cols = _ZebraRows(cv2.transpose(diag), cv2.transpose(av), cv2.transpose(ah))

    def smooth(self, x, b, bt, after):
        """Zebra line Gauss-Seidel along rows before the coarse correction, columns after.

        One direction per smoothing step costs half of alternating both ways every time and
        needs only 1-2 more outer iterations (the K-cycle's flexible CG absorbs the asymmetry).
        Columns are swept on transposed copies so that each tridiagonal solve reads contiguous
        memory; cv2.transpose is several times faster than numpy's for large arrays.
        """
        h, w = self.shape
        if not after:
            xp = np.zeros((h + 2, w))
            xp[1:-1] = x
            self.rows.sweep(xp, b)
            x[:] = xp[1:-1]
        else:
            xtp = np.zeros((w + 2, h))
            xtp[1:-1] = cv2.transpose(x)
            self.cols.sweep(xtp, bt, reverse=True)
            x[:] = cv2.transpose(xtp[1:-1])


class _Multigrid:
    """K-cycle aggregation multigrid with line smoothing for diag(mass) + L on a grid."""

    def __init__(self, mass, ah, av, coarsest=None):
        coarsest = _COARSEST_SIZE if coarsest is None else coarsest
        self.levels = []
        while mass.size > coarsest and min(mass.shape) >= 8:
            self.levels.append(_Level(mass, ah, av))
            mass, ah, av = _coarsen(mass, ah, av)
        self.coarse = spla.splu(_laplacian_csr(mass, ah, av).tocsc())

    def __call__(self, r: np.ndarray) -> np.ndarray:
        return self._cycle(0, r) if self.levels else self.coarse.solve(r)

    def _cycle(self, l, b):
        level = self.levels[l]
        b2 = b.reshape(level.shape)
        bt = cv2.transpose(b2)
        x = np.zeros(level.shape)
        level.smooth(x, b2, bt, after=False)
        r = b - level.matrix @ x.ravel()
        _prolong_add(x, self._coarse_solve(l + 1, _restrict(r, level.shape)))
        level.smooth(x, b2, bt, after=True)
        return x.ravel()

    def _coarse_solve(self, l, r):
        if l == len(self.levels):
            return self.coarse.solve(r)
        # K-cycle: up to two flexible-CG steps on this level, preconditioned by its own cycle.
        a = self.levels[l].matrix
        c = self._cycle(l, r)
        ac = a @ c
        rho1 = _dot(c, ac)
        a1 = _dot(c, r)
        r2 = r - (a1 / rho1) * ac
        if _dot(r2, r2) <= 0.0625 * _dot(r, r):  # one step already reduced r by 4x
            return (a1 / rho1) * c
        d = self._cycle(l, r2)
        ad = a @ d
        gamma = _dot(d, ac)
        rho2 = _dot(d, ad) - gamma * gamma / rho1
        a2 = _dot(d, r2)
        return (a1 / rho1 - gamma * a2 / (rho1 * rho2)) * c + (a2 / rho2) * d


def _solve_fast(t_hat, ah, av, tol, max_iter) -> np.ndarray:
    """Solve (I + L) t = t_hat by multigrid-preconditioned flexible CG.

    Stops when sqrt(r . M r) <= tol * ||t_hat||. M r approximates the error e, so r . M r
    approximates e . (I + L) e, which bounds ||e||^2 because I + L >= I; measured against a
    direct solve, the error is 2-3 times below this estimate.
    """
    mass = np.ones_like(t_hat)
    precondition = _Multigrid(mass, ah, av)
    if not precondition.levels:
        return precondition.coarse.solve(t_hat.ravel()).reshape(t_hat.shape)
    a = precondition.levels[0].matrix
    b = t_hat.ravel()
    norm_b = np.sqrt(_dot(b, b))
    x = np.zeros_like(b)
    if norm_b == 0.0:
        return x.reshape(t_hat.shape)
    r = b.copy()
    z = precondition(r)
    p = z.copy()
    rz = _dot(r, z)
    for _ in range(max_iter):
        q = a @ p
        step = rz / _dot(p, q)
        x += step * p
        r_old = r.copy()
        r -= step * q
        z = precondition(r)
        beta = _dot(z, r - r_old) / rz  # Polak-Ribiere form: robust to the nonlinear K-cycle
        rz = _dot(r, z)
        if np.sqrt(max(rz, 0.0)) <= tol * norm_b:
            break
        p = z + beta * p
    else:
        warnings.warn(
            f"the sped-up solver stopped after max_iter={max_iter} iterations at an estimated "
            f"relative error of {np.sqrt(max(rz, 0.0)) / norm_b:.1e} (tol {tol:g}); "
            "raise max_iter or tol.",
            RuntimeWarning,
            stacklevel=4,
        )
    return x.reshape(t_hat.shape)
