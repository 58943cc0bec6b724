"""rest-em (Singh et al. 2023): STaR's loop with several samples per problem at a temperature, the grader's
binary reward, at most ``rest_em.max_kept_per_problem`` kept per problem, no rationalization, and a fresh
adapter each iteration trained ``rest_em.epochs`` passes over the kept set (training.training_steps)."""

from __future__ import annotations

from ..config import Config
from ..loop import star_loop
from .registry import register


def configure(c: Config, cfg: Config) -> None:
    c.star.rationalization = False  # ReST-EM found it raised false positives
    c.star.samples_per_problem = cfg.rest_em.samples_per_problem
    c.star.max_kept_per_problem = cfg.rest_em.max_kept_per_problem
    c.sampling.temperature = cfg.rest_em.temperature
    c.train.epochs = cfg.rest_em.epochs  # the M-step passes over the kept set: steps follow its size


register("rest-em", summary="STaR-style iterations on several sampled solutions per problem", sections=("rest_em",),
         configure=configure, run=star_loop)
