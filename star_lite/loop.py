"""The STaR loop (Zelikman et al., 2022), on one screen.

    iteration 0: few-shot accuracy of the base model
    for n = 1..N:
        choose         every training problem (AdaSTaR: a prioritized share; the others keep their
                       last kept rationale)
        rationales     the model of iteration n-1 answers the chosen problems
        filter         keep rationales whose answer the task's grader accepts
        rationalize    retry the wrong ones with the gold answer as a hint; keep the right ones,
                       saved without the hint and marked rationalized; one that gives the hint
                       away (echoes or cites it) is rejected
        train          a fresh LoRA adapter on the frozen base, start_steps * growth^(n-1) steps
                       (or train.epochs passes over the kept set: ReST-EM)
        evaluate       greedy held-out accuracy (test; and validation, which stopping looks at)
        save           iter_NNN/ and a metrics row (the row marks the iteration finished)

run.budget_tokens / run.budget_seconds are checked after every sampling batch: the iteration that
spends the budget stops sampling there, trains on what it kept (or stops if it kept nothing),
is evaluated and recorded with budget_exhausted, and is the last one.

Under ``accelerate launch`` every process runs this same loop: sampling and evaluation split the
problems between them and gather the results (sampling/sharded.py), training is data-parallel
(TRL), and only rank 0 writes the run directory (rundir.py).
"""

from __future__ import annotations

import contextlib
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import torch

from . import distributed, phases, reuse
from .budget import Budget, BudgetExhausted, budget_spent
from .config import Config
from .evaluation import evaluate_into
from .allocator import apply_malloc
from .models import detach_adapter, load_adapter, load_base_model, load_tokenizer, resolve_device
from .rundir import RunDir, append_jsonl, fault_point, read_jsonl, write_jsonl
from .sampling import generator, uses_autocast
from .tasks import Problem, Task, load_task
from .tasks.datafiles import DataError
from .threads import apply_threads, registered
from .trainers.sft import train_adapter
from .training import release_memory, training_steps


LOG_TAG = ""  # a comparison's worker process: its seed and method, so side-by-side lines tell apart


def log(msg: str) -> None:
    if distributed.is_main():  # one copy of each line under accelerate launch
        print(f"[star_lite{' ' + LOG_TAG if LOG_TAG else ''}] {msg}", file=sys.stderr, flush=True)


def peak_memory_mb(device: str | None = None) -> float:
    """Peak memory so far: allocated on the GPU (``device`` "cuda", or None with a GPU present), else the
    process's peak resident memory."""
    if device == "cuda" or (device is None and torch.cuda.is_available()):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def split_seed(cfg: Config) -> int:
    """The seed that draws the problems: task.split_seed, else run.seed."""
    return cfg.run.seed if cfg.task.split_seed is None else cfg.task.split_seed


def build_task(cfg: Config) -> tuple[Task, list[Problem], list[Problem]]:
    """The task and its train/test problems; refuses empty data before any model is loaded."""
    task = load_task(cfg.task.name, **cfg.task.options)
    train = task.load("train", cfg.task.num_train, split_seed(cfg))
    test = task.load("test", cfg.task.num_test, split_seed(cfg))
    for split, problems in (("train", train), ("test", test)):
        if not problems:
            raise DataError(f"task '{cfg.task.name}' has no {split} problems; check task.options and "
                            f"task.num_{split}")
    return task, train, test


def load_validation(cfg: Config, task: Task, train: list[Problem], test: list[Problem]) -> list[Problem]:
    """``task.num_validation`` validation problems ([] when 0), checked disjoint from train and test."""
    if not cfg.task.num_validation:
        return []
    try:
        problems = task.load("validation", cfg.task.num_validation, split_seed(cfg))
    except (ValueError, NotImplementedError) as err:
        raise DataError(f"task '{cfg.task.name}' cannot load a validation split ({err}); give the task one "
                        "or set task.num_validation=0") from None
    if not problems:
        raise DataError(f"task '{cfg.task.name}' has no validation problems; check task.options and "
                        "task.num_validation")
    questions = {p.question for p in problems}
    for split, others in (("train", train), ("test", test)):
        if any(p.question in questions for p in others):  # a user's task could overlap; choosing on it would lie
            raise DataError(f"task '{cfg.task.name}': validation problems also appear in {split}; the splits "
                            "must be disjoint")
    return problems


@phases.timed("sampling")
def sample_rationales(model, tokenizer, task: Task, problems: list[Problem], cfg: Config, *,
                      hint: bool, few_shot: bool, cache: Path, num_samples: int = 1,
                      budget: Budget | None = None,
                      hint_answers: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """``num_samples`` rationales per problem (hint: the rationalization prompt), in problem order.

    ``hint_answers`` (with ``hint``) asks instead for one rationale per listed answer, each hinted
    with that answer (self-motivated learning conditions on the gold answer and on wrong ones).
    Saved per batch to ``cache``, so an interrupted iteration does not sample again what it has.
    A rationalization is graded on what is saved (the hint removed); one that gives the hint
    away is marked ``rejected: "hint"`` and never kept. With a ``budget``, sampling stops after
    the batch that spends it (``budget.cut`` says so) and only the samples drawn are returned.
    """
    phase = "rationalization" if hint else "rationale"
    done = {(r["id"], r.get("sample", 0)): r for r in read_jsonl(cache) if r["phase"] == phase}
    wanted = [(p, j) for p in problems for j in range(len(hint_answers[p.id]) if hint_answers else num_samples)]
    todo = [(p, j) for p, j in wanted if (p.id, j) not in done]
    num_shots = cfg.task.num_few_shot if (few_shot or hint) else 0  # hints are taught by example

    def save(indices: list[int], gens) -> None:
        rows = []
        for i, g in zip(indices, gens):
            p, j = todo[i]
            text = task.clean_completion(g.text)
            saved = task.remove_hint(text) if hint else text
            hinted = hint_answers[p.id][j] if hint_answers else p.answer
            row = {"id": p.id, "sample": j, "phase": phase, "question": p.question, "gold": p.answer,
                   "completion": saved, "answer": task.extract_answer(saved), "correct": task.is_correct(saved, p),
                   "tokens": g.num_tokens, **({"hint_answer": hinted} if hint_answers else {})}
            if hint and task.leaks_hint(text, hinted):  # the raw text: remove_hint may hide the echo
                row["rejected"] = "hint"
            rows.append(row)
        append_jsonl(cache, rows)
        fault_point("samples_saved")
        done.update(((r["id"], r["sample"]), r) for r in rows)
        if budget is not None and budget.charge(sum(r["tokens"] for r in rows)):
            raise BudgetExhausted(budget.cut)

    if todo and budget is not None:
        budget.cut = budget.spent()
    if todo and not (budget and budget.cut):
        prompts = [task.prompt(p, hint=hint, num_few_shot=num_shots,
                               hint_answer=hint_answers[p.id][j] if hint_answers else None) for p, j in todo]
        try:
            generator(cfg)(model, tokenizer, prompts, batch_size=cfg.sampling.batch_size,
                           max_new_tokens=cfg.sampling.max_new_tokens, temperature=cfg.sampling.temperature,
                           top_p=cfg.sampling.top_p, stop_strings=task.stop_strings, desc=phase, on_batch=save)
        except BudgetExhausted as cut:
            budget.cut = str(cut)  # also in a process whose own clock had not crossed yet (sharded sampling)
            # what the finished batches drew is saved; the caller trains on it
    return [done[(p.id, j)] for p, j in wanted if (p.id, j) in done]


def keep_examples(task: Task, problems: list[Problem], samples: list[dict[str, Any]],
                  max_per_problem: int = 0) -> list[dict[str, Any]]:
    """Training pairs from correct samples: bare question as prompt, rationale as completion.

    Exact duplicates are dropped; at most ``max_per_problem`` pairs per problem (0 = no cap;
    ReST-EM keeps 10 so easy problems do not crowd out hard ones).
    """
    by_id = {p.id: p for p in problems}
    seen, kept, per_problem = set(), [], {}
    for s in samples:
        if not s["correct"] or s.get("rejected"):
            continue
        if max_per_problem and per_problem.get(s["id"], 0) >= max_per_problem:
            continue
        pair = (task.format_question(by_id[s["id"]]), task.format_completion(s["completion"]))
        if pair in seen:
            continue
        seen.add(pair)
        per_problem[s["id"]] = per_problem.get(s["id"], 0) + 1
        kept.append({"prompt": pair[0], "completion": pair[1], "id": s["id"],
                     "rationalized": s["phase"] == "rationalization"})
    return kept


def false_positive_summary(task: Task, problems: list[Problem], kept: list[dict[str, Any]]) -> dict[str, Any]:
    """How many kept (right-answer) rationales reach it through a step that does not hold, and their share;
    {} for a task that cannot check steps (``Task.steps_are_right`` None)."""
    by_id = {p.id: p for p in problems}
    checked = [task.steps_are_right(k["completion"], by_id[k["id"]]) for k in kept]
    if not kept or all(c is None for c in checked):
        return {}
    wrong = sum(c is False for c in checked)
    return {"num_false_positive": wrong, "false_positive_share": wrong / len(kept)}


def validation_stalled(rows: list[dict[str, Any]]) -> str | None:
    """When the last iteration's validation accuracy is no higher than an earlier one's, a
    description (METHODS.md, STaR step 6: stop when held-out accuracy stops rising); else None."""
    scored = [r for r in sorted(rows, key=lambda r: r["iteration"]) if r.get("validation_accuracy") is not None]
    if len(scored) < 2:
        return None
    last, best = scored[-1], max(scored[:-1], key=lambda r: r["validation_accuracy"])
    if last["validation_accuracy"] > best["validation_accuracy"]:
        return None
    return (f"validation accuracy {last['validation_accuracy']:.3f} at iteration {last['iteration']} is no higher "
            f"than {best['validation_accuracy']:.3f} at iteration {best['iteration']}")


def clear_unfinished(it_dir: Path) -> None:
    """Remove what an interrupted attempt at this iteration left, except its saved samples."""
    if not distributed.is_main():  # rank 0 keeps the run directory
        return
    for name in ("adapter", ".adapter.tmp", "trainer"):
        shutil.rmtree(it_dir / name, ignore_errors=True)
    for name in ("train.jsonl", "eval.jsonl", "validation.jsonl", "samples.jsonl"):
        (it_dir / name).unlink(missing_ok=True)
    it_dir.mkdir(parents=True, exist_ok=True)


class RunContext(NamedTuple):
    """What ``start_run`` opens for a method: its run directory, the task and its split, the tokenizer, the
    base model, and the finished iterations' metrics rows (iteration 0 among them). A tuple, so
    ``rundir, task, train, test, tokenizer, base, finished = start_run(cfg)`` reads it too."""
    rundir: RunDir
    task: Task
    train: list[Problem]
    test: list[Problem]
    tokenizer: Any
    base: Any
    finished: dict[int, dict[str, Any]]


def open_run(cfg: Config, unread_sections: frozenset[str] = frozenset(), name: str = "") -> RunDir:
    """Set the thread count and create the run directory, or check its saved config against ``cfg``
    (``RunDir.prepare``): once per run, by its entry point (``run`` here, ``methods.run_method``)."""
    apply_threads(cfg.run.threads, log)
    apply_malloc(cfg.run.malloc, resolve_device(cfg.model.device), log)
    rundir = RunDir(cfg.run.output_dir)
    changed = rundir.prepare(cfg, unread_sections)
    if changed:
        log(f"{name + ': ' if name else ''}continuing with changed settings: {', '.join(changed)}")
    return rundir


def start_run(cfg: Config) -> RunContext | None:
    """Build the task, load the model, and make sure iteration 0 (the few-shot base model) is recorded, in
    the run directory its entry point opened (``open_run``). Returns None when every iteration is already
    finished."""
    rundir = RunDir(cfg.run.output_dir)
    task, train_problems, test_problems = build_task(cfg)
    validation = load_validation(cfg, task, train_problems, test_problems)
    finished = rundir.finished()
    if finished and max(finished) >= cfg.star.iterations:
        log(f"{rundir.root}: all {cfg.star.iterations} iterations are finished")
        return None

    torch.manual_seed(cfg.run.seed)
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    base = load_base_model(cfg.model)
    if not cfg.model.load_in_4bit:
        log(f"the base model runs in {next(base.parameters()).dtype}, not 4-bit (model.load_in_4bit=false)"
            + (", generating under bfloat16 autocast (sampling.autocast)" if uses_autocast(cfg) else ""))
    if 0 not in finished:
        t0 = time.time()
        result = evaluate_into(rundir.iter_dir(0) / "eval.jsonl", base, tokenizer, task, test_problems, cfg,
                               few_shot=True, validation=validation)
        seconds = round(time.time() - t0, 1)
        row = {"iteration": 0, "stage": "few-shot", **result, "num_train_examples": 0, "num_rationalized": 0,
               "num_rejected_hint": 0, "generated_tokens": 0, "seconds": seconds, "seconds_eval": seconds,
               **reuse.take(), "peak_memory_mb": round(peak_memory_mb())}
        rundir.add_metrics(row)
        log(f"iteration 0 (few-shot base): accuracy {result['accuracy']:.3f}")
        finished[0] = row
    return RunContext(rundir, task, train_problems, test_problems, tokenizer, base, finished)


def run(cfg: Config) -> list[dict[str, Any]]:
    """Run (or continue) STaR as configured (``star-lite run``); return the metrics rows, one per iteration.

    A second process on the same run.output_dir is refused (RunDirBusy) instead of mixing rows."""
    with RunDir(cfg.run.output_dir).locked(), running(cfg):
        open_run(cfg)
        return star_loop(cfg)


@contextlib.contextmanager
def running(cfg: Config) -> Iterator[None]:
    """While a run (or one method of a comparison) runs: registered among this machine's star_lite processes,
    its thread count re-read as each phase begins (``phases.hooked``; processes beside it may have started or
    finished)."""
    with registered(), phases.hooked(lambda: apply_threads(cfg.run.threads, log)):
        yield


def planned_stop(cfg: Config) -> tuple[str, str]:
    """Why a run that ran every configured iteration stopped: its iterations; with none configured (few-shot),
    its schedule, for it generates nothing."""
    if cfg.star.iterations == 0:
        return "schedule", "star.iterations = 0: the few-shot base model alone; generates nothing"
    return "iterations", f"star.iterations = {cfg.star.iterations} finished"


def star_loop(cfg: Config) -> list[dict[str, Any]]:
    """STaR's iterations (and ReST-EM's, AdaSTaR's, v-star's generator) in a run directory already opened
    (``open_run``): continues from the last finished iteration."""
    started = start_run(cfg)
    if started is None:
        rundir = RunDir(cfg.run.output_dir)
        if not rundir.stop():  # every iteration was there before it began: iteration 0 copied (few-shot)
            rundir.record_stop(*planned_stop(cfg))
        return rundir.metrics()
    rundir, task, train_problems, test_problems, tokenizer, base, finished = started
    validation = load_validation(cfg, task, train_problems, test_problems)

    last = max(finished)
    model = base if last == 0 else load_adapter(base, rundir.iter_dir(last) / "adapter")
    stop = planned_stop(cfg)
    for it in range(last + 1, cfg.star.iterations + 1):
        apply_threads(cfg.run.threads, log)  # processes beside this one may have started or finished
        spent = budget_spent(rundir.metrics(), cfg)
        if spent:
            log(f"budget reached ({spent}); stopping before iteration {it}")
            stop = ("budget", spent)
            break
        stalled = validation_stalled(rundir.metrics()) if cfg.star.stop_when_validation_stops_rising else None
        if stalled:
            log(f"{stalled}; stopping before iteration {it} (star.stop_when_validation_stops_rising)")
            stop = ("validation_stopped_rising", stalled)
            break
        t0, timings = time.time(), {}
        it_dir = rundir.iter_dir(it)
        clear_unfinished(it_dir)
        cache = it_dir / "samples.partial.jsonl"  # kept across a restart: sampling resumes from it
        budget = Budget.for_iteration(rundir.metrics(), cfg, cache, started=t0)
        few_shot = model is base or cfg.sampling.few_shot_after_training

        # --- choose the problems: all (STaR), or AdaSTaR's prioritized share ---------------
        problems, carried = train_problems, []
        if cfg.star.adaptive_sampling:
            from .methods.adastar import choose_problems

            problems, carried = choose_problems(rundir, train_problems, it, cfg)

        # --- rationale generation and filtering -------------------------------------------
        t = time.time()
        samples = sample_rationales(model, tokenizer, task, problems, cfg, hint=False, few_shot=few_shot,
                                    cache=cache, num_samples=cfg.star.samples_per_problem, budget=budget)
        timings["seconds_sampling"] = round(time.time() - t, 1)
        solved = {s["id"] for s in samples if s["correct"]}  # problems answered right at least once
        num_correct = len(solved)

        # --- rationalization: the gold answer as a hint, for the problems still wrong -------
        t = time.time()
        rationalized: list[dict[str, Any]] = []
        if cfg.star.rationalization and not budget.cut:
            sampled = {s["id"] for s in samples}
            wrong = [p for p in problems if p.id in sampled and p.id not in solved]
            rationalized = sample_rationales(model, tokenizer, task, wrong, cfg, hint=True,
                                             few_shot=True, cache=cache, budget=budget)
        timings["seconds_rationalization"] = round(time.time() - t, 1)
        all_samples = samples + rationalized
        write_jsonl(it_dir / "samples.jsonl", all_samples)
        kept = keep_examples(task, train_problems, all_samples, cfg.star.max_kept_per_problem) + carried
        write_jsonl(it_dir / "train.jsonl", kept)
        num_rationalized = sum(k["rationalized"] for k in kept if not k.get("carried"))
        false_positives = false_positive_summary(task, train_problems, [k for k in kept if not k.get("carried")])
        num_rejected_hint = sum(s.get("rejected") == "hint" for s in rationalized)
        log(f"iteration {it}: {num_correct}/{len(problems)} answered right, "
            f"{num_rationalized} rationalized, {num_rejected_hint} rejected for leaking the hint, "
            f"{len(kept)} training examples" + (f" ({len(carried)} carried over)" if carried else ""))
        if budget.cut:  # the samples are paid for: train on what they gave, then stop (checked above)
            log(f"iteration {it}: budget reached while sampling ({budget.cut}); sampling stopped after "
                f"{len(all_samples)} samples" + (", training on what was kept" if kept else ""))
        if not kept:
            msg = (f"iteration {it} kept no rationale: the model answered no training problem right"
                   + (" even with the hint" if cfg.star.rationalization else "")
                   + ". A model must start above chance to bootstrap; try an easier task setting, "
                     "a different rationale format, or a larger model.")
            if budget.cut:  # nothing to train on and nothing left to sample with
                log(f"iteration {it} kept no rationale before the budget ran out; stopping")
                stop = ("budget", budget.cut)
                break
            if cfg.star.stop_on_empty:
                log(msg + " Stopping (star.stop_on_empty=true).")
                stop = ("no_data", f"iteration {it} kept no rationale")
                break
            log(msg + " Continuing with the previous model (star.stop_on_empty=false).")
            continue

        # --- train a fresh adapter from the base weights ------------------------------------
        t = time.time()
        steps = training_steps(it, len(kept), cfg.train)
        base = detach_adapter(model)
        del model
        release_memory()
        model, trained = train_adapter(base, tokenizer, [{"prompt": k["prompt"], "completion": k["completion"]}
                                                         for k in kept], cfg, steps, it_dir,
                                       seed=cfg.run.seed + it)
        timings["seconds_training"] = round(time.time() - t, 1)

        # --- evaluate and record -----------------------------------------------------------
        t = time.time()
        few_shot_eval = cfg.sampling.few_shot_after_training
        result = evaluate_into(it_dir / "eval.jsonl", model, tokenizer, task, test_problems, cfg,
                               few_shot=few_shot_eval, validation=validation)
        timings["seconds_eval"] = round(time.time() - t, 1)
        row = {"iteration": it, "stage": "star", **result, "num_train_examples": len(kept),
               "num_rationalized": num_rationalized, "num_rejected_hint": num_rejected_hint,
               "num_correct_samples": num_correct, "train_accuracy": num_correct / len(problems), **false_positives,
               **({"num_sampled_problems": len(problems), "num_carried": len(carried)}
                  if cfg.star.adaptive_sampling else {}),
               "steps": steps, "train_loss": trained.train_loss, "train_world_size": trained.world_size,
               "trained_tokens": trained.trained_tokens,
               "generated_tokens": sum(s["tokens"] for s in all_samples),
               "budget_exhausted": budget.cut is not None,
               "seconds": round(time.time() - t0, 1), **timings, **reuse.take(),
               "peak_memory_mb": round(peak_memory_mb())}
        rundir.add_metrics(row)
        if distributed.is_main():
            cache.unlink(missing_ok=True)
        log(f"iteration {it}: accuracy {result['accuracy']:.3f} (iteration 0: {finished[0]['accuracy']:.3f})"
            + (f", validation {result['validation_accuracy']:.3f}" if validation else "")
            + f", {steps} steps, {row['seconds']:.0f}s "
            + (f"(+{row['seconds_reused']:.0f}s of another method's identical work reused) " if row.get("seconds_reused") else "")
            + f"(sampling {timings['seconds_sampling']:.0f}s, rationalization {timings['seconds_rationalization']:.0f}s, "
            f"training {timings['seconds_training']:.0f}s, eval {timings['seconds_eval']:.0f}s)")
        if budget.cut:  # the iteration that spent the budget is the last
            stop = ("budget", budget.cut)
            break
    rundir.record_stop(*stop)
    return rundir.metrics()
