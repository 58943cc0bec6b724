"""star_lite: a language model teaches itself to reason (STaR) on one GPU.

>>> import star_lite
>>> cfg = star_lite.load_config("configs/quickstart.yaml")          # doctest: +SKIP
>>> rows = star_lite.run(cfg)                                        # doctest: +SKIP
>>> star_lite.read_run(cfg.run.output_dir)["metrics"][-1]["accuracy"] # doctest: +SKIP
"""

from __future__ import annotations

from .config import Config, ConfigError, load_config
from .rundir import read_run
from .tasks import Exemplar, Problem, Task, load_task


def run(cfg: Config):
    """Run or continue the STaR loop; returns the metrics rows (one per iteration)."""
    from .loop import run as _run

    return _run(cfg)


def evaluate(cfg: Config, adapter=None, few_shot=None, out=None):
    """Greedy held-out accuracy of the base model or a saved adapter."""
    from .api import evaluate_model

    return evaluate_model(cfg, adapter=adapter, few_shot=few_shot, out=out)


def compare(cfg: Config):
    """Run every method in ``cfg.compare.methods``; writes comparison.csv/.md and plots; returns the rows."""
    from .compare import compare as _compare

    return _compare(cfg)


def write_report(run_dir):
    """Write report.md and PNG plots into a run directory; returns the report's path."""
    from .report import write_report

    return write_report(run_dir)


__all__ = ["compare", "write_report", "Config", "ConfigError", "load_config", "run", "evaluate", "read_run", "load_task",
           "Task", "Problem", "Exemplar"]
