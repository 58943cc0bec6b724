"""Greedy held-out accuracy, with per-difficulty breakdown, judged by the task's own grader."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

from .config import Config
from .sampling import generator
from .stats import wilson
from .tasks import Problem, Task


def score(task: Task, problems: list[Problem], completions: list[str]) -> dict[str, Any]:
    """Accuracy overall (with its 95% Wilson interval) and by ``task.difficulty``; pure, so it is
    cheap to test.

    >>> from star_lite.tasks import load_task
    >>> t = load_task("arithmetic", min_digits=1, max_digits=1)
    >>> ps = t.load("test", 2, seed=0)
    >>> r = score(t, ps, [f"The answer is {ps[0].answer}.", "no idea"])
    >>> r["accuracy"], r["num_correct"], round(r["ci_low"], 3), round(r["ci_high"], 3)
    (0.5, 1, 0.095, 0.905)
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
    lo, hi = wilson(sum(correct), n)
    return {
        "accuracy": sum(correct) / n if n else 0.0,
        "num_eval": n,
        "num_correct": sum(correct),
        "ci_low": lo,
        "ci_high": hi,
        "accuracy_by_difficulty": {g: sum(v) / len(v) for g, v in sorted(by_group.items())},
        "correct": correct,
    }


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al., 2021).

    >>> pass_at_k(4, 1, 1), pass_at_k(4, 0, 2), pass_at_k(4, 1, 4)
    (0.25, 0.0, 1.0)
    """
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_answer(answers: list[str | None]) -> str | None:
    """The most common extracted answer (None ignored); ties go to the one seen first.

    >>> majority_answer(["3", None, "4", "4", "3"]), majority_answer([None, None])
    ('3', None)
    """
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


def majority_correct(answers: list[str | None], correct: list[bool]) -> bool:
    """Whether the majority answer is right, graded as the task graded the samples that gave it
    (so a task whose grader accepts equivalent forms of the gold answer is graded the same way).

    >>> majority_correct(["3", "4", "4"], [False, True, True]), majority_correct([None, None], [False, False])
    (True, False)
    """
    vote = majority_answer(answers)
    return vote is not None and any(ok for a, ok in zip(answers, correct) if a == vote)


def score_k(task: Task, problems: list[Problem], samples: list[list[str]], k: int) -> dict[str, float]:
    """pass@k and maj@k over ``samples[i]`` (n >= k completions for problem i)."""
    passes, votes = [], []
    for p, completions in zip(problems, samples):
        graded = [task.is_correct(x, p) for x in completions]
        passes.append(pass_at_k(len(completions), sum(graded), k))
        votes.append(majority_correct([task.extract_answer(x) for x in completions[:k]], graded[:k]))
    n = len(problems)
    return {f"pass@{k}": sum(passes) / n if n else 0.0, f"maj@{k}": sum(votes) / n if n else 0.0}


def evaluate(model, tokenizer, task: Task, problems: list[Problem], cfg: Config, *,
             few_shot: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Greedy accuracy of ``model`` on ``problems``; returns (metrics, per-problem records)."""
    return evaluate_splits(model, tokenizer, task, [problems], cfg, few_shot=few_shot)[0]


def evaluate_splits(model, tokenizer, task: Task, splits: list[list[Problem]], cfg: Config, *,
                    few_shot: bool = True) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """``evaluate`` on each list of problems in ``splits`` (a stage's test and validation problems), decoded in
    one greedy call, so they fill the same batches (fewer and fuller ones than a call per split), and scored
    apart: one (metrics, records) per split. pass@k and maj@k (``eval.pass_k``) are drawn for the first split
    only; ``eval_tokens`` counts each split's own greedy tokens (and the first's k samples)."""
    num_shots = cfg.task.num_few_shot if few_shot else 0
    everything = [p for problems in splits for p in problems]
    prompts = [task.prompt(p, num_few_shot=num_shots) for p in everything]
    generate = generator(cfg)
    gens = generate(model, tokenizer, prompts, batch_size=cfg.eval.batch_size,
                    max_new_tokens=cfg.eval.max_new_tokens, stop_strings=task.stop_strings, desc="evaluating")
    completions = [task.clean_completion(g.text) for g in gens]
    out, start = [], 0
    for problems in splits:
        end = start + len(problems)
        result = score(task, problems, completions[start:end])
        records = [{"id": p.id, "question": p.question, "gold": p.answer, "completion": c,
                    "answer": task.extract_answer(c), "correct": ok, "difficulty": task.difficulty(p)}
                   for p, c, ok in zip(problems, completions[start:end], result.pop("correct"))]
        result["eval_tokens"] = sum(g.num_tokens for g in gens[start:end])
        out.append((result, records))
        start = end
    k, problems = cfg.eval.pass_k, splits[0]
    if k > 0 and problems:  # k samples per problem at temperature, for pass@k and majority vote @k
        first = prompts[:len(problems)]
        many = generate(model, tokenizer, [x for x in first for _ in range(k)], batch_size=cfg.eval.batch_size,
                        max_new_tokens=cfg.eval.max_new_tokens, temperature=cfg.eval.k_temperature,
                        top_p=cfg.eval.k_top_p, stop_strings=task.stop_strings, desc=f"evaluating @{k}")
        texts = [task.clean_completion(g.text) for g in many]
        result = out[0][0]
        result.update(score_k(task, problems, [texts[i * k:(i + 1) * k] for i in range(len(problems))], k))
        result["eval_tokens"] += sum(g.num_tokens for g in many)
    return out


def evaluate_into(path, model, tokenizer, task: Task, problems: list[Problem], cfg: Config, *,
                  few_shot: bool, validation: list[Problem] = ()) -> dict[str, Any]:
    """``evaluate``, with the per-problem records written to ``path`` (an iteration's eval.jsonl). With
    ``validation`` problems (written beside it, to validation.jsonl), both are decoded in one call
    (``evaluate_splits``) and the metrics gain ``validation_accuracy``: what stopping and compare.tune read."""
    from pathlib import Path

    from . import phases
    from .rundir import write_jsonl

    phases.began()  # the run's thread count, re-read (processes beside this one may have started or finished)
    splits = [problems, list(validation)] if validation else [problems]
    scored = evaluate_splits(model, tokenizer, task, splits, cfg, few_shot=few_shot)
    result, records = scored[0]
    write_jsonl(path, records)
    if validation:
        held, held_records = scored[1]
        write_jsonl(Path(path).with_name("validation.jsonl"), held_records)
        result["validation_accuracy"] = held["accuracy"]
    return result
