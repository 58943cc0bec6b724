"""The registry of methods: a method is a name, the function that runs it, the config sections of its own
that it reads, and how it sets its config from the comparison's shared one.

A method registers itself where it is defined (``@register("grpo", ...)``); the CLI's help,
``config.METHODS``, the check of ``compare.methods`` and which sections a method reads all come from
here. A method outside star_lite registers the same way, and a config names it by import path,
``"package.module:name"``, as a user's task is named (docs/methods.md, "Adding a method").
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass
from typing import Any, Callable

from ..config import Config, ConfigError

Rows = list[dict[str, Any]]


class UnknownMethod(ConfigError):
    """No method is registered under the name (its module, if it names one, imported)."""


@dataclass(frozen=True)
class Method:
    name: str
    run: Callable[[Config], Rows]  # runs (or continues) the method in cfg.run.output_dir; returns its metrics rows
    summary: str  # one line: what the method's result is
    sections: tuple[str, ...] = ()  # the config sections of its own it reads (rl, dpo, ...)
    configure: Callable[[Config, Config], None] | None = None  # (its config, the shared one): set its own values


_METHODS: dict[str, Method] = {}


def register(name: str, *, summary: str, sections: tuple[str, ...] = (),
             configure: Callable[[Config, Config], None] | None = None, run: Callable[[Config], Rows] | None = None):
    """Register a method: ``@register("name", summary=...)`` over its run function, or with ``run=`` for a
    function that serves several methods (STaR's loop serves five). Returns the run function."""
    def add(fn: Callable[[Config], Rows]) -> Callable[[Config], Rows]:
        if name in _METHODS and _METHODS[name].run is not fn:
            raise ValueError(f"method {name!r} is registered twice "
                             f"({_METHODS[name].run.__module__} and {fn.__module__})")
        _METHODS[name] = Method(name, fn, summary, tuple(sections), configure)
        return fn

    return add(run) if run is not None else add


def _builtins() -> None:
    from .. import methods  # noqa: F401  (importing the package registers the built-in methods)


def names(*, built_in_only: bool = False) -> tuple[str, ...]:
    """Every registered method, built-in ones first, in the order they registered (``built_in_only``:
    star_lite's own, the default of ``compare.methods``)."""
    _builtins()
    return tuple(n for n, m in _METHODS.items() if not built_in_only or m.run.__module__.startswith("star_lite."))


def get(name: str) -> Method:
    """The method called ``name``; ``"package.module:name"`` imports the module first (a user's method).
    Raises ConfigError naming the method and the choices."""
    _builtins()
    if name not in _METHODS and ":" in name:
        module, short = name.split(":", 1)
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ConfigError(f"compare.methods: cannot import {module!r} for method {name!r}: {err}") from err
        if short in _METHODS and name not in _METHODS:  # registered by its own name: known by its path too
            m = _METHODS[short]
            _METHODS[name] = Method(name, m.run, m.summary, m.sections, m.configure)
    if name not in _METHODS:
        raise UnknownMethod(f"unknown method {name!r}; choose from {', '.join(_METHODS)}, or register one "
                          "(docs/methods.md, 'Adding a method')")
    return _METHODS[name]


def section_readers() -> dict[str, set[str]]:
    """Each method-specific config section and the methods that read it."""
    _builtins()
    readers: dict[str, set[str]] = {}
    for m in _METHODS.values():
        for section in m.sections:
            readers.setdefault(section, set()).add(m.name)
    return readers


def unread_sections(cfg: Config, method: str) -> frozenset[str]:
    """The method-specific sections ``method`` never reads (with ``cfg``, its method_config). Every other
    method runs with such a section's defaults, so adding or tuning one method in a comparison config never
    makes the other methods' finished runs refuse to continue ("holds a run with a different config")."""
    return frozenset(section for section, readers in section_readers().items()
                     if method not in readers and not (section == "adastar" and cfg.star.adaptive_sampling))


def method_config(cfg: Config, method: str) -> Config:
    """The config ``method`` runs with: the shared one plus the method's own settings."""
    c = copy.deepcopy(cfg)
    c.run.output_dir = f"{cfg.compare.output_dir}/{method}"
    m = get(method)
    if m.configure is not None:
        m.configure(c, cfg)
    for section in unread_sections(c, method):
        setattr(c, section, type(getattr(c, section))())
    return c
