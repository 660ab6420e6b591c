"""Torch modules only. Nothing here reads files or knows about the app.

:func:`build_net` turns an architecture config (as stored in a weights file) into a module.
"""

from __future__ import annotations

import importlib

from torch import nn

# arch name -> (module, class, config class); configs are dataclasses of plain values
ARCHITECTURES = {
    "dpenet": ("dpe.nets.dpenet", "DPENet", "DPENetConfig"),
    "retinexnet": ("dpe.nets.retinexnet", "RetinexNet", "RetinexNetConfig"),
    "dran": ("dpe.nets.dran", "DRAN", "DRANConfig"),
    "dpeg": ("dpe.nets.dpeg", "DPEG", "DPEGConfig"),
    "dpeg2": ("dpe.nets.dpeg2", "DPEG2", "DPEG2Config"),
}


def build_net(config: dict) -> nn.Module:
    """Construct the network a config describes, e.g. ``{"arch": "dpenet", "width": 64}``."""
    config = dict(config)
    arch = config.pop("arch", None)
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}.")
    module_name, cls_name, cfg_name = ARCHITECTURES[arch]
    module = importlib.import_module(module_name)
    return getattr(module, cls_name)(getattr(module, cfg_name)(**config))
