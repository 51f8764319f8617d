"""Finding every implementation of a protocol, so that no contract suite relies on a hand-kept list.

Like river's ``utils/estimator_checks`` run over every estimator: each contract suite
(``tests/test_contract_*.py``) asks :func:`implementations` for the classes of the ``loopml``
package that implement its protocol, and parametrises its tests over them. A suite keeps one
*factory* per implementation (how to build an empty one on the test machine: a file, a session
server); :func:`factory_for` fails every contract test of a class that has none, and each suite's
``test_every_implementation_has_a_factory`` names the missing or stale ones. So a new backend is
tested, or the suite fails, the day it is added; it is never silently left out.

Discovery is structural: every module of the package is imported (the dev environment has the
optional extras; an import error fails the suite rather than hiding a module), and a class counts
when it is concrete, is not itself a protocol, and has every public method and property its
protocol declares. Entry-point modules (``__main__``) run the CLI on import and are skipped.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any, Generic, TypeVar

import pytest

import loopml

T = TypeVar("T")
F = TypeVar("F")


@cache
def loopml_modules() -> tuple[ModuleType, ...]:
    """Every module of the ``loopml`` package, imported (``__main__`` modules excepted)."""

    def fail(name: str) -> None:
        raise ImportError(f"contract discovery: cannot import package {name}")

    modules = [loopml]
    for info in pkgutil.walk_packages(loopml.__path__, "loopml.", onerror=fail):
        if info.name.rsplit(".", 1)[-1] != "__main__":
            modules.append(importlib.import_module(info.name))
    return tuple(modules)


def protocol_members(protocol: type) -> frozenset[str]:
    """The public methods and properties ``protocol`` declares itself (its own class body)."""
    members = set()
    for name, value in vars(protocol).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (staticmethod, classmethod, property)) or inspect.isfunction(value):
            members.add(name)
    if not members:
        raise ValueError(f"{protocol.__qualname__} declares no public method: nothing to discover by")
    return frozenset(members)


def _is_protocol(cls: type) -> bool:
    return bool(cls.__dict__.get("_is_protocol", False))


@cache
def implementations(protocol: type) -> tuple[type, ...]:
    """The concrete classes of ``loopml`` with every member ``protocol`` declares, sorted by qualified name."""
    members = protocol_members(protocol)
    found: dict[str, type] = {}
    for module in loopml_modules():
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__ or cls is protocol or _is_protocol(cls) or inspect.isabstract(cls):
                continue
            if all(
                callable(getattr(cls, name, None)) or isinstance(inspect.getattr_static(cls, name, None), property)
                for name in members
            ):
                found[qualified(cls)] = cls
    if not found:
        raise AssertionError(f"no class of loopml implements {protocol.__qualname__}: is discovery broken?")
    return tuple(found[name] for name in sorted(found))


def qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def ids(classes: tuple[type, ...]) -> list[str]:
    """Test ids: the class names."""
    return [cls.__qualname__ for cls in classes]


@dataclass(frozen=True)
class Backend(Generic[T]):
    """How the contract tests reach one implementation: handles on one empty store, and on an unreachable one."""

    #: a new handle on the same, initially empty, store at each call; picklable where a suite runs it in a child process
    open: Callable[[], T]
    #: a handle on a store that cannot be reached or created (a refused port, a folder that is a file)
    unreachable: Callable[[], T]
    #: what every error about the unreachable store must contain (its name, never a password)
    names: str


#: What a suite keeps per implementation: from the test's request (for server fixtures) and temporary folder.
Factory = Callable[[pytest.FixtureRequest, Path], T]

#: The password of unreachable server URLs: no error message may show it.
SECRET = "s3cret-pw"


def factory_for(factories: Mapping[type, F], cls: type, suite: str) -> F:
    """The suite's factory for ``cls``; fails the test, naming what to add, when there is none."""
    factory = factories.get(cls)
    if factory is None:
        pytest.fail(
            f"{qualified(cls)} implements the protocol of {suite} but the suite has no factory for it: "
            f"add one to FACTORIES in {suite} so that it runs the contract",
            pytrace=False,
        )
    return factory


def check_factories(protocol: type, factories: Mapping[type, Any], suite: str) -> None:
    """Every discovered implementation has a factory, and every factory is for a discovered implementation."""
    discovered = set(implementations(protocol))
    missing = sorted(qualified(cls) for cls in discovered - set(factories))
    stale = sorted(qualified(cls) for cls in set(factories) - discovered)
    assert not missing, f"{', '.join(missing)} implement(s) {protocol.__qualname__} without a factory in {suite}"
    assert not stale, f"{suite} has factories for {', '.join(stale)}, which discovery no longer finds as {protocol.__qualname__}"
