"""Tasks: each owns its data, few-shot prompt, hint format, answer extraction and grader."""

from __future__ import annotations

import importlib
from typing import Any

from .arithmetic import ArithmeticTask
from .base import Exemplar, Problem, Task
from .chain import ChainAdditionTask
from .commonsense_qa import CommonsenseQATask
from .gsm8k import GSM8KTask
from .hendrycks_math import MathTask

TASKS: dict[str, type[Task]] = {
    "arithmetic": ArithmeticTask,
    "gsm8k": GSM8KTask,
    "commonsense_qa": CommonsenseQATask,
    "chain_addition": ChainAdditionTask,
    "math": MathTask,
}


def load_task(name: str, **options: Any) -> Task:
    """A built-in task by name, or a user's Task class by import path ``package.module:ClassName``.

    >>> load_task("arithmetic", min_digits=1, max_digits=1).name
    'arithmetic'
    """
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"task.name: cannot import '{name}' ({err}); is its module on PYTHONPATH?") from None
    elif name in TASKS:
        cls = TASKS[name]
    else:
        raise ValueError(f"task.name: unknown task '{name}'; built-in: {', '.join(TASKS)}, "
                         "or give 'package.module:ClassName'")
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ValueError(f"task.name: '{name}' is not a subclass of star_lite.tasks.Task")
    try:
        return cls(**options)
    except TypeError as err:
        raise ValueError(f"task.options for '{name}': {err}") from None


__all__ = ["Task", "Problem", "Exemplar", "TASKS", "load_task",
           "ArithmeticTask", "GSM8KTask", "CommonsenseQATask", "ChainAdditionTask", "MathTask"]
