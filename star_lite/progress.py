"""Progress bars: widgets in Jupyter, text in a terminal, silent in CI logs and pipes."""

from __future__ import annotations

import os
import sys


def progress(total: int, desc: str, unit: str = "it"):
    from tqdm.auto import tqdm

    # tqdm.auto renders a widget in a notebook; elsewhere show a bar only on a terminal.
    in_notebook = "ipykernel" in sys.modules
    disable = bool(os.environ.get("CI")) or os.environ.get("STAR_LITE_PROGRESS") == "0"
    if not in_notebook and not sys.stderr.isatty():
        disable = True
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, leave=False, dynamic_ncols=True)
