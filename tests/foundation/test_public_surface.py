"""Each package's public surface is exactly its ``__all__`` (httpx's habit): the API cannot grow by accident."""

from __future__ import annotations
import __future__

import collections.abc
import importlib
import types
import typing

import pytest


def _imported_typing_name(name: str, value: object) -> bool:
    """``Any``, ``Mapping`` and friends imported for annotations are not part of the API."""
    return any(getattr(mod, name, None) is value for mod in (typing, collections.abc, __future__))


PACKAGES = [
    "vocab",
    "catalog",
    "contracts",
    "usage_policy",
    "metering",
    "connector.errors",
    "connector.store",
    "connector.identity",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_equals_public_names(name: str) -> None:
    mod = importlib.import_module(name)
    exported = getattr(mod, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    public = {
        k
        for k, v in vars(mod).items()
        if not k.startswith("_")
        and not isinstance(v, types.ModuleType)
        and k != "annotations"
        and not _imported_typing_name(k, v)
    }
    assert sorted(exported) == sorted(public), f"{name}: __all__ and public names differ"
