"""The Python API a notebook uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import Config
from .rundir import write_jsonl


def default_few_shot(cfg: Config, adapter) -> bool:
    """The prompt star_lite evaluates with: few-shot for the base model; for an adapter the bare
    question (as adapters are trained), unless ``sampling.few_shot_after_training``."""
    return adapter is None or cfg.sampling.few_shot_after_training


def evaluate_model(cfg: Config, adapter: str | Path | None = None, few_shot: bool | None = None,
                   out: str | Path | None = None) -> dict[str, Any]:
    """Greedy held-out accuracy of the configured base model, or of a saved adapter on it, with the
    prompt ``few_shot`` says (default: ``default_few_shot``)."""
    from .evaluation import evaluate as _evaluate
    from .loop import build_task
    from .models import load_adapter, load_base_model, load_tokenizer

    task, _, test = build_task(cfg)
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    model = load_base_model(cfg.model)
    if adapter is not None:
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"no adapter at {adapter} (expected adapter_config.json there)")
        model = load_adapter(model, adapter)
    if few_shot is None:
        few_shot = default_few_shot(cfg, adapter)
    result, records = _evaluate(model, tokenizer, task, test, cfg, few_shot=few_shot)
    if out is not None:
        write_jsonl(Path(out), records)
    return result
