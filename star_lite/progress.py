"""Progress bars: widgets in Jupyter, text in a terminal, silent in CI logs and pipes, and shown
by the first process only under ``accelerate launch``.

One switch covers every bar a run shows: star_lite's own, the trainers' per-step bars and
transformers' "Loading weights" bars. ``STAR_LITE_PROGRESS=0`` (or ``CI``) turns them off;
``STAR_LITE_PROGRESS=1`` turns them on even when output goes to a file.
"""

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


def bars_enabled() -> bool:
    """Whether progress bars are shown: in a notebook or on a terminal, on the first process,
    unless switched off."""
    from .distributed import is_main

    if not is_main():
        return False
    setting = os.environ.get("STAR_LITE_PROGRESS")
    if setting in ("0", "1"):
        return setting == "1"
    if os.environ.get("CI"):
        return False
    return "ipykernel" in sys.modules or sys.stderr.isatty()


def quiet_libraries() -> None:
    """Turn off transformers' and datasets' own bars when star_lite's are off (a log file gets
    hundreds of lines of them otherwise); turn them back on when bars are on. Also silences two
    library messages a user cannot act on: transformers' deprecation of ``is_gradient_checkpointing``
    (read by peft and TRL, not by star_lite) and bitsandbytes' note that the optional ``kernels``
    package (a Hub download) is missing for its CPU 4-bit kernel."""
    import logging as std_logging
    import warnings

    import datasets
    from transformers.utils import logging

    datasets.disable_progress_bars()  # one bar per map step is noise even on a terminal
    if bars_enabled():
        logging.enable_progress_bar()
    else:
        logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    std_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(std_logging.ERROR)


def quiet_trainer(trainer):
    """Without bars a transformers Trainer prints every log dict to stdout (its PrinterCallback);
    the metrics go to the run directory and to ``report_to``, so a log file keeps star_lite's lines."""
    from transformers.trainer_callback import PrinterCallback

    if not bars_enabled():
        trainer.remove_callback(PrinterCallback)
    return trainer


def progress(total: int, desc: str, unit: str = "it"):
    from tqdm.auto import tqdm  # a widget in a notebook, text elsewhere

    return tqdm(total=total, desc=desc, unit=unit, disable=_quiet > 0 or not bars_enabled(), leave=False,
                dynamic_ncols=True)
