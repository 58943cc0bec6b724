"""Every method a comparison runs, on the same task, split, seed, few-shot prompt and grader: one module
each, registered by name (registry.py), with the mechanics they share (budget, trainer settings, pairs,
saving) outside them.

    few-shot                                  few_shot.py (STaR's loop, star_lite/loop.py, iteration 0)
    sft-direct                                sft_direct.py
    star, star-no-rationalization             star.py (STaR's loop)
    rest-em                                   rest_em.py (STaR's loop)
    self-motivated                            self_motivated.py
    grpo                                      grpo.py
    dpo                                       dpo.py
    v-star                                    v_star.py
    adastar                                   adastar.py (STaR's loop)

Each method writes a run directory of the STaR layout; ``metrics.jsonl`` rows carry a
``stage`` (few-shot, star, sft, sft-direct, rl, dpo, verifier).
"""

from __future__ import annotations

from typing import Any

from ..config import Config
from ..loop import open_run, running
from ..rundir import RunDir
# importing each module registers its methods, in this order (the default of compare.methods)
from . import few_shot, sft_direct, star, rest_em, self_motivated, grpo, dpo, v_star, adastar  # noqa: F401
from .registry import Method, get, method_config, names, register, section_readers, unread_sections
from .self_motivated import sample_conditioned_rationales
from .v_star import choose_best_of_k, verifier_pairs, verifier_ranking

__all__ = ["Method", "choose_best_of_k", "get", "method_config", "names", "register", "run_method",
           "sample_conditioned_rationales", "section_readers", "unread_sections", "verifier_pairs", "verifier_ranking"]


def run_method(cfg: Config, method: str, run_name: str | None = None) -> list[dict[str, Any]]:
    """Run (or continue) one method with the comparison's shared config; returns its metrics rows. The run
    directory is ``compare.output_dir/<run_name or method>`` (compare.tune names one per grid point)."""
    mcfg = method_config(cfg, method)
    if run_name is not None:
        mcfg.run.output_dir = f"{cfg.compare.output_dir}/{run_name}"
    with RunDir(mcfg.run.output_dir).locked(), running(mcfg):  # one process per method directory
        # a run saved with other values in sections this method never reads continues (runs saved
        # before method_config reset those sections hold the comparison's values there)
        open_run(mcfg, unread_sections(mcfg, method), name=method)
        return get(method).run(mcfg)
