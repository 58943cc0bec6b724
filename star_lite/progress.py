"""Progress bars: widgets in Jupyter, text in a terminal, silent in CI logs and pipes, and shown
by the first process only under ``accelerate launch``."""

from __future__ import annotations

import contextlib
import os
import sys

_quiet = 0  # > 0 inside quiet(): an outer bar already counts this work


@contextlib.contextmanager
def quiet():
    """No bars inside this block (the caller shows one for the whole job)."""
    global _quiet
    _quiet += 1
    try:
        yield
    finally:
        _quiet -= 1


def progress(total: int, desc: str, unit: str = "it"):
    from tqdm.auto import tqdm

    from .distributed import is_main

    # tqdm.auto renders a widget in a notebook; elsewhere show a bar only on a terminal.
    in_notebook = "ipykernel" in sys.modules
    disable = bool(os.environ.get("CI")) or os.environ.get("STAR_LITE_PROGRESS") == "0" or _quiet > 0
    if not in_notebook and not sys.stderr.isatty():
        disable = True
    if not is_main():
        disable = True
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, leave=False, dynamic_ncols=True)
