"""Where model weights come from: ``weights/NAME.safetensors`` first, then the Hub, then an error.

Weights are stored in fp16 with the architecture in the file's metadata, and loaded as fp32.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


class WeightsNotFoundError(FileNotFoundError):
    """No weights file for a model, locally or on the Hub; the message says how to get one."""


def weights_dir() -> Path:
    """``DPE_WEIGHTS_DIR`` if set (e.g. a training run's ``--out-dir``), else ``weights/``."""
    folder = os.environ.get("DPE_WEIGHTS_DIR", "").strip()
    return Path(folder) if folder else WEIGHTS_DIR


def weights_path(name: str) -> Path:
    """The local weights file for ``name`` (it may not exist)."""
    return weights_dir() / f"{name}.safetensors"


def has_weights(name: str) -> bool:
    """True if ``name`` has a local weights file (see :func:`weights_dir`)."""
    return weights_path(name).is_file()


def hub_repo() -> str:
    """The Hub repo named by ``DPE_WEIGHTS_REPO`` that deep weights come from; "" when unset."""
    return os.environ.get("DPE_WEIGHTS_REPO", "").strip()


def resolve_weights(name: str) -> Path:
    """Path to the weights of ``name``: local file, else ``DPE_WEIGHTS_REPO`` on the Hub."""
    local = weights_path(name)
    if local.is_file():
        return local
    repo = hub_repo()
    hub_note = "DPE_WEIGHTS_REPO is not set, so the Hub was not asked"
    if repo:
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(repo_id=repo, filename=local.name))
        except Exception as exc:  # offline, missing repo or file, no network: all mean "not here"
            log.info("hub download of %s from %s failed: %s", local.name, repo, exc)
            hub_note = f"the Hub repo {repo!r} did not provide it ({type(exc).__name__})"
    raise WeightsNotFoundError(
        f"no weights for {name!r}: {local} does not exist and {hub_note}. Train them with "
        f"`python -m dpe.train` (see weights/README.md) or set DPE_WEIGHTS_REPO to a Hub repo "
        f"holding {local.name}."
    )


def save_weights(state_dict: dict, path: str | os.PathLike, config: dict, **info) -> None:
    """Write ``state_dict`` as fp16 safetensors with ``config`` (and ``info``) as metadata."""
    from safetensors.torch import save_file

    tensors = {
        k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()).contiguous()
        for k, v in state_dict.items()
    }
    metadata = {"config": json.dumps(config), **{k: json.dumps(v) for k, v in info.items()}}
    save_file(tensors, str(path), metadata=metadata)


def load_weights(path: str | os.PathLike) -> tuple[dict, dict, dict]:
    """Read a weights file: (fp32 state dict, architecture config, other metadata)."""
    import torch
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    state = {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()}
    if "config" not in meta:
        raise ValueError(f"{path} has no 'config' metadata; it was not written by save_weights.")
    info = {k: json.loads(v) for k, v in meta.items() if k != "config"}
    return state, json.loads(meta["config"]), info
