"""Every method a comparison runs, on the same task, split, seed, few-shot prompt and grader.

    few-shot                 iteration 0 only: the base model with worked examples
    sft-direct               one adapter trained on gold answers with no rationale (the paper's direct baseline)
    star                     STaR with rationalization
    star-no-rationalization  STaR without it
    rest-em                  ReST-EM: k samples at temperature, binary reward, <= 10 kept per problem
    self-motivated           rationales conditioned on the gold answer and on wrong ones, ranked by the grader:
                             SFT on the right ones, a reward model on right-over-wrong pairs, RL from SFT
    grpo                     RL from the base model with the task's correctness reward alone

Each method writes a run directory of the STaR layout; ``metrics.jsonl`` rows carry a
``stage`` (few-shot, star, sft, sft-direct, rl).
"""

from __future__ import annotations

import copy
import time
from typing import Any

from . import distributed
from .config import Config
from .evaluation import evaluate_into
from .loop import budget_spent, keep_examples, log, peak_memory_mb, run as run_star, sample_rationales, start_run
from .models import detach_adapter, fresh_adapter
from .rundir import RunDir, read_jsonl, write_jsonl
from .training import num_steps, release_memory, train_adapter

STAGES = {"sft-direct": 1, "self-motivated": 2, "grpo": 1}  # iterations (stages) of the non-loop methods


def method_config(cfg: Config, method: str) -> Config:
    """The config ``method`` runs with: the shared one plus the method's own settings."""
    c = copy.deepcopy(cfg)
    c.run.output_dir = f"{cfg.compare.output_dir}/{method}"
    if method == "few-shot":
        c.star.iterations = 0
    elif method == "star-no-rationalization":
        c.star.rationalization = False
    elif method == "rest-em":
        c.star.rationalization = False  # ReST-EM found it raised false positives
        c.star.samples_per_problem = cfg.rest_em.samples_per_problem
        c.star.max_kept_per_problem = cfg.rest_em.max_kept_per_problem
        c.sampling.temperature = cfg.rest_em.temperature
        c.train.epochs = cfg.rest_em.epochs  # the M-step passes over the kept set: steps follow its size
    elif method == "sft-direct":
        # as many optimizer steps as all of STaR's iterations together
        c.train.start_steps = sum(num_steps(i, cfg.train.start_steps, cfg.train.step_growth)
                                  for i in range(1, cfg.star.iterations + 1))
    if method in STAGES:
        c.star.iterations = STAGES[method]
    return c


def run_method(cfg: Config, method: str) -> list[dict[str, Any]]:
    """Run (or continue) one method with the comparison's shared config; returns its metrics rows."""
    mcfg = method_config(cfg, method)
    runner = {"sft-direct": run_sft_direct, "self-motivated": run_self_motivated, "grpo": run_grpo}.get(method)
    with RunDir(mcfg.run.output_dir).locked():  # one process per method directory
        return runner(mcfg) if runner else run_star(mcfg)


def _seconds_left(rundir: RunDir, cfg: Config) -> float:
    """What remains of run.budget_seconds (0 = no limit; at least a second when one is set)."""
    if not cfg.run.budget_seconds:
        return 0.0
    return max(1.0, cfg.run.budget_seconds - sum(r.get("seconds", 0.0) for r in rundir.metrics()))


def rl_summary(trained) -> dict[str, Any]:
    """Steps, the mean reward of the first and last logged RL steps, the last KL to the reference
    (None with rl.beta = 0) and the trained tokens, from ``train_rl``'s ``TrainResult``."""
    history = trained.history
    return {"rl_steps": history[-1].get("step", 0) if history else 0,
            "rl_reward_first": history[0]["reward"] if history else None,
            "rl_reward_last": history[-1]["reward"] if history else None,
            "rl_kl_last": history[-1].get("kl") if history else None,
            "trained_tokens": trained.trained_tokens, "train_world_size": trained.world_size}


def sample_conditioned_rationales(model, tokenizer, task, problems, cfg: Config, cache) -> tuple[list, list]:
    """Self-motivated learning's data: for every question, one rationale hinted with the gold answer
    and one per wrong answer (``task.wrong_answers``; for a task that has none, the model's own wrong
    answers among ``rl.samples_per_problem`` free samples). Each is graded against the gold answer;
    one that gives its hint away (``task.leaks_hint``) is marked ``leaked``. Returns the conditioned
    rationales and the free samples (for their token cost)."""
    n = cfg.rl.wrong_answers_per_problem
    sample_cfg = copy.deepcopy(cfg)
    sample_cfg.sampling.temperature = cfg.rl.temperature
    wrong = {p.id: [a for a in task.wrong_answers(p, n) if a != p.answer][:n] for p in problems}
    need = [p for p in problems if not wrong[p.id]]
    free = []
    if need:
        free = sample_rationales(model, tokenizer, task, need, sample_cfg, hint=False, few_shot=True, cache=cache,
                                 num_samples=cfg.rl.samples_per_problem)
        for s in free:
            if not s["correct"] and s["answer"] is not None and s["answer"] not in wrong[s["id"]] \
                    and len(wrong[s["id"]]) < n:
                wrong[s["id"]].append(s["answer"])
    conditioned = sample_rationales(model, tokenizer, task, problems, sample_cfg, hint=True, few_shot=True,
                                    cache=cache, hint_answers={p.id: [p.answer] + wrong[p.id] for p in problems})
    for s in conditioned:  # sample_rationales judged the raw text against the answer it was hinted
        s["leaked"] = s.get("rejected") == "hint"
    return conditioned, free


def _finish_row(rundir: RunDir, it: int, stage: str, t0: float, result: dict, **extra) -> dict[str, Any]:
    row = {"iteration": it, "stage": stage, **result, "num_rationalized": 0, **extra,
           "seconds": round(time.time() - t0, 1), "peak_memory_mb": round(peak_memory_mb())}
    row.setdefault("num_train_examples", 0)
    row.setdefault("generated_tokens", 0)
    rundir.add_metrics(row)
    log(f"{rundir.root.name} {stage}: accuracy {result['accuracy']:.3f}, {row['seconds']:.0f}s")
    return row


def run_sft_direct(cfg: Config) -> list[dict[str, Any]]:
    """Fine-tune on gold answers, no rationale (STaR's 'direct fine-tune' baseline)."""
    started = start_run(cfg)
    if started is None:
        return RunDir(cfg.run.output_dir).metrics()
    rundir, task, train, test, tokenizer, base, _ = started
    t0, it_dir = time.time(), rundir.iter_dir(1)
    examples = [{"prompt": task.format_question(p), "completion": task.format_completion(task.direct_answer(p))}
                for p in train]
    write_jsonl(it_dir / "train.jsonl", examples)
    model, trained = train_adapter(base, tokenizer, examples, cfg, cfg.train.start_steps, it_dir,
                                   seed=cfg.run.seed + 1)
    result = evaluate_into(it_dir / "eval.jsonl", model, tokenizer, task, test, cfg, few_shot=False)
    _finish_row(rundir, 1, "sft-direct", t0, result, num_train_examples=len(examples),
                steps=cfg.train.start_steps, train_loss=trained.train_loss, trained_tokens=trained.trained_tokens,
                train_world_size=trained.world_size)
    return rundir.metrics()


def run_self_motivated(cfg: Config) -> list[dict[str, Any]]:
    """Self-motivated learning (Feng et al. 2024): rationales for the right and for wrong answers, SFT
    on the right ones (1), then a reward model on right-over-wrong pairs and RL from the SFT policy (2)."""
    from .rl import (make_reward, pair_accuracy_summary, preference_pairs, split_pairs, train_reward_model,
                     train_rl)

    started = start_run(cfg)
    if started is None:
        return RunDir(cfg.run.output_dir).metrics()
    rundir, task, train, test, tokenizer, base, finished = started
    sft_dir = rundir.iter_dir(1)
    if 1 not in finished:
        # --- rationales conditioned on the gold answer and on wrong ones, graded -----------
        t0 = time.time()
        samples, free = sample_conditioned_rationales(base, tokenizer, task, train, cfg,
                                                      cache=sft_dir / "samples.partial.jsonl")
        write_jsonl(sft_dir / "samples.jsonl", samples)
        write_jsonl(sft_dir / "free_samples.jsonl", free)
        kept = keep_examples(task, train, [s for s in samples if not s["leaked"]])
        write_jsonl(sft_dir / "train.jsonl", kept)
        if not kept:
            log("self-motivated: no right rationale to train on, even hinted with the gold answer; stopping")
            return rundir.metrics()

        # --- SFT on the right ones ------------------------------------------------------------
        steps = num_steps(1, cfg.train.start_steps, cfg.train.step_growth)
        model, trained = train_adapter(base, tokenizer, [{"prompt": k["prompt"], "completion": k["completion"]}
                                                         for k in kept], cfg, steps, sft_dir,
                                       seed=cfg.run.seed + 1)
        result = evaluate_into(sft_dir / "eval.jsonl", model, tokenizer, task, test, cfg, few_shot=False)
        _finish_row(rundir, 1, "sft", t0, result, num_train_examples=len(kept), steps=steps,
                    num_rejected_hint=sum(s["leaked"] for s in samples),
                    generated_tokens=sum(s["tokens"] for s in samples + free),
                    train_loss=trained.train_loss, trained_tokens=trained.trained_tokens,
                    train_world_size=trained.world_size)
        if distributed.is_main():
            (sft_dir / "samples.partial.jsonl").unlink(missing_ok=True)
        base = detach_adapter(model)
        del model
        release_memory()

    spent = budget_spent(rundir.metrics(), cfg)
    if spent:
        log(f"self-motivated: budget reached ({spent}) after SFT; no RL phase")
        return rundir.metrics()

    # --- reward model on right-over-wrong pairs of the same question -------------------------
    t0, rl_dir = time.time(), rundir.iter_dir(2)
    pairs = preference_pairs(task, train, [s for s in read_jsonl(sft_dir / "samples.jsonl") if not s.get("leaked")])
    train_pairs, held_pairs = split_pairs(pairs, cfg.rl.heldout_fraction, cfg.run.seed)
    write_jsonl(rl_dir / "pairs.jsonl", [dict(p, heldout=p in held_pairs) for p in pairs])
    init = sft_dir / "adapter" if cfg.rl.reward_model_init == "sft" else None
    reward_model, rm = train_reward_model(cfg, tokenizer, train_pairs, rl_dir, init_adapter=init)
    pair_acc = pair_accuracy_summary(reward_model, tokenizer, held_pairs)
    log(f"self-motivated: reward model pairwise accuracy {pair_acc['reward_model_pair_accuracy']} on "
        f"{len(held_pairs)} held-out pairs (95% interval {pair_acc['reward_model_pair_ci_low']}"
        f"-{pair_acc['reward_model_pair_ci_high']})")

    # --- RL from the SFT policy, KL-anchored to it ----------------------------------------------
    from peft import PeftModel

    policy = PeftModel.from_pretrained(base, str(sft_dir / "adapter"), is_trainable=True)
    counter: dict[str, int] = {}
    if distributed.is_main():
        (rl_dir / "rollouts.jsonl").unlink(missing_ok=True)  # an interrupted attempt's rollouts
    reward = make_reward(task, {p.id: p for p in train}, reward_model=reward_model, tokenizer=tokenizer,
                         reward_model_weight=cfg.rl.reward_model_weight,
                         correctness_weight=cfg.rl.correctness_weight, counter=counter,
                         rollouts=rl_dir / "rollouts.jsonl")
    remaining = cfg.run.budget_tokens - sum(r.get("generated_tokens", 0) for r in rundir.metrics())
    model, trained = train_rl(policy, tokenizer, task, train, reward, cfg, rl_dir,
                              budget_tokens=remaining if cfg.run.budget_tokens else 0,
                              budget_seconds=_seconds_left(rundir, cfg), counter=counter)
    del reward_model
    release_memory()
    result = evaluate_into(rl_dir / "eval.jsonl", model, tokenizer, task, test, cfg, few_shot=False)
    _finish_row(rundir, 2, "rl", t0, result, generated_tokens=counter.get("tokens", 0),
                reward_model_pairs=len(train_pairs), **pair_acc,
                reward_model_loss=rm.history[-1]["loss"] if rm.history else None,
                reward_model_trained_tokens=rm.trained_tokens, reward_model_init=cfg.rl.reward_model_init,
                **rl_summary(trained))
    return rundir.metrics()


def run_grpo(cfg: Config) -> list[dict[str, Any]]:
    """GRPO from the base model, rewarded by the task's grader alone (few-shot prompts, as the base
    needs them); with rl.beta > 0 its KL reference is the base (a fresh adapter starts equal to it)."""
    from transformers import set_seed

    from .rl import make_reward, train_rl

    started = start_run(cfg)
    if started is None:
        return RunDir(cfg.run.output_dir).metrics()
    rundir, task, train, test, tokenizer, base, _ = started
    t0, it_dir = time.time(), rundir.iter_dir(1)
    counter: dict[str, int] = {}
    if distributed.is_main():
        (it_dir / "rollouts.jsonl").unlink(missing_ok=True)  # an interrupted attempt's rollouts
    reward = make_reward(task, {p.id: p for p in train}, correctness_weight=1.0, counter=counter,
                         rollouts=it_dir / "rollouts.jsonl")
    set_seed(cfg.run.seed + 1)
    policy = fresh_adapter(base, cfg.model)
    model, trained = train_rl(policy, tokenizer, task, train, reward, cfg, it_dir,
                              num_few_shot=cfg.task.num_few_shot, budget_tokens=cfg.run.budget_tokens,
                              budget_seconds=_seconds_left(rundir, cfg), counter=counter)
    result = evaluate_into(it_dir / "eval.jsonl", model, tokenizer, task, test, cfg, few_shot=True)
    _finish_row(rundir, 1, "rl", t0, result, generated_tokens=counter.get("tokens", 0),
                **rl_summary(trained))
    return rundir.metrics()
