"""Registry of enhancement methods: one name -> one constructor -> one object with ``enhance``.

Every method takes and returns the project's image type (float32, (H, W, 3), [0, 1]).
Modules register their constructors with :func:`register_method` (plain functions with
:func:`register_function`), stating each name and label once; callers use
:func:`create_method` (a fresh object) or :func:`get_method` (one cached object per process,
so model weights load once and are shared by every user of the app).
"""

from __future__ import annotations

import importlib
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from dpe._image import as_rgb_float, is_gray


class Method(Protocol):
    name: str
    label: str

    def enhance(self, image: np.ndarray, **options) -> np.ndarray: ...


# Methods ranked by `dpe.evaluate.recommend` on the committed evaluation (docs/evaluation.json:
# the test split, three seeds): each method's worst group of help (degraded-input PSNR) and harm
# (clean-input PSNR, capped) together. The app ticks the first one available. `identity`, which
# enhances nothing, is left out; tests/test_methods.py checks this order against the report.
RECOMMENDED = (
    "dpe-g", "dpe-g2", "dpe", "dpe-s", "clahe", "retinexnet", "dran", "autocontrast",
)  # fmt: skip


class UnknownMethodError(ValueError):
    """The method name is not registered."""


class MethodOutputError(RuntimeError):
    """A method returned something that is not an image of its input's size (a bug, not input)."""


class CheckedMethod:
    """What the registry hands out: a method with its input and output checks in one place.

    Every caller (``dpe.enhance``, the evaluation, the demo, studies) goes through this, so
    each gets the same guarantees: float32 (H, W, 3) in [0, 1] of the input's size, and a
    grayscale source comes back with identical channels. ``gray`` says whether the *source*
    is grayscale (pass ``LoadedImage.gray``); ``None`` decides from the image itself, which is
    exact for gray sources loaded through ``dpe.io`` and degraded by ``dpe.degrade``.
    """

    def __init__(self, inner: Method):
        self.inner = inner
        self.name = inner.name
        self.label = inner.label

    def __getattr__(self, attr: str):
        return getattr(self.inner, attr)  # e.g. a deep method's ``net``

    def enhance(self, image: np.ndarray, *, gray: bool | None = None, **options) -> np.ndarray:
        """Enhance ``image``; see the class docstring for ``gray``."""
        image = as_rgb_float(image)
        out = np.asarray(self.inner.enhance(image, **options))
        if out.shape != image.shape or not np.issubdtype(out.dtype, np.floating):
            raise MethodOutputError(
                f"method {self.name!r} returned {out.dtype} {out.shape} for a {image.shape} image."
            )
        if not np.isfinite(out).all():
            raise MethodOutputError(f"method {self.name!r} returned NaN or infinite values.")
        out = np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)
        if (is_gray(image) if gray is None else gray) and not is_gray(out):
            # Methods are not colour-symmetric (nets, LIME's max-channel map); a gray source
            # must not come back tinted, or a rater could tell the method by its colour.
            out = np.repeat(out.mean(axis=2, keepdims=True), 3, axis=2)
        return out


@dataclass(frozen=True)
class FunctionMethod:
    """A method that is a plain function ``fn(image, *, option=default, ...) -> image``.

    ``defaults`` override ``fn``'s keyword defaults; ``enhance`` options override both. It keeps
    no state, so one instance serves every thread.
    """

    name: str
    label: str
    fn: Callable[..., np.ndarray]
    defaults: dict = field(default_factory=dict)

    def __post_init__(self):
        self._check(self.defaults)

    def _check(self, options: dict) -> None:
        allowed = self.fn.__kwdefaults__ or {}
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown option(s) {', '.join(unknown)} for method {self.name!r}; "
                f"allowed: {', '.join(sorted(allowed)) or 'none'}."
            )

    def enhance(self, image: np.ndarray, **options) -> np.ndarray:
        """Run ``fn`` on ``image`` with the merged options; float32 out."""
        self._check(options)
        return np.asarray(self.fn(image, **{**self.defaults, **options}), dtype=np.float32)


_REGISTRY: dict[str, Callable[..., Method]] = {}
_INFO: dict[str, dict] = {}
_CACHE: dict[str, Method] = {}
_CACHE_LOCK = threading.Lock()

# Modules that register methods when imported, in display order.
_MODULES = ("dpe.methods.deep", "dpe.methods.classic", "dpe.methods.lime", "dpe.methods.dual")
_loaded = False


def register_method(name: str, *, label: str, kind: str, weights: str | None = None):
    """Decorator recording ``factory`` under ``name``.

    ``kind`` is "deep", "classic" or "reference"; ``weights`` names the weights file a deep
    method needs (without extension), so ``python -m dpe methods`` can say whether it is present.
    """

    def decorator(factory: Callable[..., Method]) -> Callable[..., Method]:
        if name in _REGISTRY:
            warnings.warn(f"method {name!r} registered twice; keeping the newer one", stacklevel=2)
        _REGISTRY[name] = factory
        _INFO[name] = {"name": name, "label": label, "kind": kind, "weights": weights}
        return factory

    return decorator


def register_function(
    name: str, fn: Callable[..., np.ndarray], *, label: str, kind: str
) -> Callable[..., FunctionMethod]:
    """Register the plain function ``fn`` as method ``name`` and return its factory.

    The factory's keyword arguments become defaults for ``fn``'s options (see FunctionMethod).
    """

    def factory(**defaults) -> FunctionMethod:
        return FunctionMethod(name, label, fn, defaults)

    factory.__doc__ = f"Build the ``{name}`` method; ``defaults`` are options of ``{fn.__name__}``."
    return register_method(name, label=label, kind=kind)(factory)


def _load_modules() -> None:
    global _loaded
    if _loaded:
        return
    for module in _MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # A method module that is not written yet must not break the others.
            if exc.name != module:
                raise
    _loaded = True


def list_methods(kind: str | None = None) -> list[str]:
    """Registered method names in display order, optionally only those of one ``kind``."""
    _load_modules()
    return [n for n in _REGISTRY if kind is None or _INFO[n]["kind"] == kind]


def method_info(name: str) -> dict:
    """Name, label, kind and weights file of a registered method."""
    _load_modules()
    _check_name(name)
    return dict(_INFO[name])


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        known = ", ".join(_REGISTRY) or "none"
        raise UnknownMethodError(f"unknown method {name!r}; registered methods: {known}.")


def create_method(name: str, **kwargs) -> CheckedMethod:
    """Build a new method object (deep methods load their weights here)."""
    _load_modules()
    _check_name(name)
    return CheckedMethod(_REGISTRY[name](**kwargs))


def get_method(name: str) -> CheckedMethod:
    """The process-wide shared instance of ``name`` (built on first use)."""
    _load_modules()
    _check_name(name)
    with _CACHE_LOCK:
        if name not in _CACHE:
            _CACHE[name] = create_method(name)
        return _CACHE[name]
