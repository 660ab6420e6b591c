"""Every ``Examples`` section in ``dpe`` runs, as scikit-image's do: a docstring that lies fails."""

import doctest
import importlib
import pkgutil

import pytest

import dpe

MODULES = sorted(m.name for m in pkgutil.walk_packages(dpe.__path__, "dpe."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_the_examples_are_found():
    attempted = sum(
        doctest.testmod(importlib.import_module(name)).attempted for name in ("dpe.io", "dpe.files")
    )
    assert attempted > 0
