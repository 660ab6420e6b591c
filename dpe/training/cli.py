"""Command-line flags from a config dataclass: each field's help is written once, beside it.

    lr: float | None = flag(None, "Adam lr")

:func:`config_parser` makes ``--lr`` (typed from the annotation, default shown), ``--no-NAME``
for a boolean that defaults to True, and a plain switch for one that defaults to False.
"""

from __future__ import annotations

import argparse
from dataclasses import field, fields

_TYPES = {"int": int, "float": float, "int | None": int, "float | None": float}


def flag(default, help: str):  # noqa: A002 - argparse's own word
    """A dataclass field with its command-line help."""
    return field(default=default, metadata={"help": help})


def config_parser(config_class, prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with one flag per field of ``config_class``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for f in fields(config_class):
        help_ = f.metadata.get("help", "").replace("%", "%%")  # argparse formats it
        name = f.name.replace("_", "-")
        if f.type == "bool" and f.default is True:
            parser.add_argument(
                f"--no-{name}", dest=f.name, action="store_false", help=f"switch off: {help_}"
            )
        elif f.type == "bool":
            parser.add_argument(f"--{name}", action="store_true", help=help_)
        else:
            parser.add_argument(
                f"--{name}",
                type=_TYPES.get(f.type, str),
                default=f.default,
                help=f"{help_} (default: {f.default})",
            )
    return parser
