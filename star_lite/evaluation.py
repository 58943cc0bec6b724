"""Greedy held-out accuracy, with per-difficulty breakdown, judged by the task's own grader."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from .config import Config
from .sampling import generate
from .tasks import Problem, Task


def score(task: Task, problems: list[Problem], completions: list[str]) -> dict[str, Any]:
    """Accuracy overall and by ``task.difficulty``; pure, so it is cheap to test.

    >>> from star_lite.tasks import load_task
    >>> t = load_task("arithmetic", min_digits=1, max_digits=1)
    >>> ps = t.load("test", 2, seed=0)
    >>> score(t, ps, [f"The answer is {ps[0].answer}.", "no idea"])["accuracy"]
    0.5
    """
    by_group: dict[str, list[bool]] = defaultdict(list)
    correct = []
    for p, c in zip(problems, completions):
        ok = task.is_correct(c, p)
        correct.append(ok)
        group = task.difficulty(p)
        if group is not None:
            by_group[group].append(ok)
    n = len(correct)
    return {
        "accuracy": sum(correct) / n if n else 0.0,
        "num_eval": n,
        "accuracy_by_difficulty": {g: sum(v) / len(v) for g, v in sorted(by_group.items())},
        "correct": correct,
    }


def evaluate(model, tokenizer, task: Task, problems: list[Problem], cfg: Config, *,
             few_shot: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Greedy accuracy of ``model`` on ``problems``; returns (metrics, per-problem records)."""
    num_shots = cfg.task.num_few_shot if few_shot else 0
    prompts = [task.prompt(p, num_few_shot=num_shots) for p in problems]
    gens = generate(model, tokenizer, prompts, batch_size=cfg.eval.batch_size,
                    max_new_tokens=cfg.eval.max_new_tokens, stop_strings=task.stop_strings, desc="evaluating")
    completions = [task.clean_completion(g.text) for g in gens]
    result = score(task, problems, completions)
    records = [{"id": p.id, "question": p.question, "gold": p.answer, "completion": c,
                "answer": task.extract_answer(c), "correct": ok, "difficulty": task.difficulty(p)}
               for p, c, ok in zip(problems, completions, result.pop("correct"))]
    result["eval_tokens"] = sum(g.num_tokens for g in gens)
    return result, records
