"""Every method a comparison runs, on the same task, split, seed, few-shot prompt and grader.

    few-shot                 iteration 0 only: the base model with worked examples
    sft-direct               one adapter trained on gold answers with no rationale (the paper's direct baseline)
    star                     STaR with rationalization
    star-no-rationalization  STaR without it
    rest-em                  ReST-EM: k samples at temperature, binary reward, <= 10 kept per problem
    self-motivated           rationales conditioned on the gold answer and on wrong ones, ranked by the grader:
                             SFT on the right ones, a reward model on right-over-wrong pairs, RL from SFT
    grpo                     RL from the base model with the task's correctness reward alone
    dpo                      iterative DPO: k samples per problem, SFT on the right ones, then DPO on
                             right-over-wrong pairs of the same question, the SFT adapter as reference
    v-star                   V-STaR: STaR's generator sampling k per problem at temperature, then a DPO
                             verifier on all its right and wrong samples; best-of-k by the verifier at test
    adastar                  AdaSTaR: STaR sampling only a prioritized share of the problems each iteration

Each method writes a run directory of the STaR layout; ``metrics.jsonl`` rows carry a
``stage`` (few-shot, star, sft, sft-direct, rl, dpo, verifier).
"""

from __future__ import annotations

import copy
import shutil
import time
from typing import Any

from . import distributed, phases
from .config import Config
from .evaluation import evaluate_into, majority_correct, score
from .budget import Budget, budget_spent
from .loop import (build_task, clear_unfinished, keep_examples, log, peak_memory_mb, run as run_star,
                   sample_rationales, start_run)
from .models import detach_adapter, fresh_adapter, load_adapter, load_base_model, load_tokenizer
from .rundir import RunDir, read_jsonl, write_jsonl
from .sampling import generator
from .stats import wilson
from .tasks import Problem, Task
from .threads import apply_threads, registered
from .training import num_steps, release_memory, train_adapter, training_steps

STAGES = {"sft-direct": 1, "self-motivated": 2, "grpo": 1}  # iterations (stages) of the non-loop methods

# The method-specific config sections and the methods that read them. Every other method runs with
# the section's defaults, so adding or tuning one method in a comparison config never makes the
# other methods' finished runs refuse to continue ("holds a run with a different config").
SECTION_READERS = {"rest_em": {"rest-em"}, "rl": {"self-motivated", "grpo"}, "dpo": {"dpo"},
                   "v_star": {"v-star"}, "adastar": {"adastar"}}


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
    elif method == "v-star":
        c.star.rationalization = False  # the verifier learns from the model's own attempts, unhinted
        c.star.samples_per_problem = cfg.v_star.samples_per_problem
        c.sampling.temperature = cfg.v_star.temperature
    elif method == "adastar":
        c.star.adaptive_sampling = True
    if method in STAGES:
        c.star.iterations = STAGES[method]
    if method == "grpo" and cfg.rl.grpo_init == "sft":
        c.star.iterations = 2  # the SFT adapter, then GRPO from it
    for section in unread_sections(c, method):
        setattr(c, section, type(getattr(c, section))())
    return c


def unread_sections(cfg: Config, method: str) -> frozenset[str]:
    """The method-specific sections ``method`` never reads (with ``cfg``, its method_config)."""
    return frozenset(section for section, readers in SECTION_READERS.items()
                     if method not in readers and not (section == "adastar" and cfg.star.adaptive_sampling))


def run_method(cfg: Config, method: str, run_name: str | None = None) -> list[dict[str, Any]]:
    """Run (or continue) one method with the comparison's shared config; returns its metrics rows. The run
    directory is ``compare.output_dir/<run_name or method>`` (compare.tune names one per grid point)."""
    mcfg = method_config(cfg, method)
    if run_name is not None:
        mcfg.run.output_dir = f"{cfg.compare.output_dir}/{run_name}"
    runner = {"sft-direct": run_sft_direct, "self-motivated": run_self_motivated, "grpo": run_grpo,
              "dpo": run_dpo, "v-star": run_v_star}.get(method)
    with RunDir(mcfg.run.output_dir).locked() as rundir, registered():  # one process per method directory
        apply_threads(mcfg.run.threads, log)
        # a run saved with other values in sections this method never reads continues (runs saved
        # before method_config reset those sections hold the comparison's values there)
        changed = rundir.prepare(mcfg, unread_sections(mcfg, method))
        if changed:
            log(f"{method}: continuing with changed settings: {', '.join(changed)}")
        return runner(mcfg) if runner else run_star(mcfg)


def stopped_for_budget(rundir: RunDir, cfg: Config, where: str) -> bool:
    """Whether the finished stages spent the budget, so the next stage (``where``) does not start; if so,
    logged and recorded as the run's stop reason."""
    spent = budget_spent(rundir.metrics(), cfg)
    if spent:
        log(f"{rundir.root.name}: budget reached ({spent}) {where}")
        rundir.record_stop("budget", f"{spent}, {where}")
    return spent is not None


def rl_summary(trained) -> dict[str, Any]:
    """From ``train_rl``'s ``TrainResult`` (one history row per step): steps, the mean reward of the
    first and last steps and of the first and last quarter of them, the mean share of zero-variance
    groups trained on, groups dropped by dynamic sampling, the last KL to the reference (None with
    rl.beta = 0), the adapter's update norm, the mean completion length and the trained tokens."""
    history = trained.history

    def mean(key, rows):
        values = [h[key] for h in rows if h.get(key) is not None]
        return sum(values) / len(values) if values else None

    quarter = max(1, len(history) // 4)
    return {"rl_steps": history[-1].get("step", 0) if history else 0,
            "rl_reward_first": history[0]["reward"] if history else None,
            "rl_reward_last": history[-1]["reward"] if history else None,
            "rl_reward_first_quarter": mean("reward", history[:quarter]),
            "rl_reward_last_quarter": mean("reward", history[-quarter:]),
            "rl_zero_variance_share": mean("zero_variance_share", history),
            "rl_groups_dropped": sum(h.get("groups_dropped") or 0 for h in history),
            "rl_kl_last": history[-1].get("kl") if history else None,
            "rl_update_norm": history[-1].get("update_norm") if history else None,
            "rl_completion_length": mean("completion_length", history),
            "rl_stop_reason": trained.stop_reason,
            "trained_tokens": trained.trained_tokens, "train_world_size": trained.world_size}


def reward_false_positives(counter: dict[str, int]) -> dict[str, Any]:
    """The share of RL rollouts the grader rewarded that reached the answer through a wrong step."""
    right = counter.get("right", 0)
    return {"rl_false_positive_share": counter.get("false_positive", 0) / right if right else None}


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


@phases.timed("eval")
def evaluate_stage(it_dir, model, tokenizer, task, train, test, cfg: Config, few_shot: bool) -> dict[str, Any]:
    """Held-out test accuracy of a stage (``eval.jsonl``) and, with ``task.num_validation`` > 0, its
    validation accuracy (``validation.jsonl``): what compare.tune chooses on, never test."""
    from .loop import load_validation

    result = evaluate_into(it_dir / "eval.jsonl", model, tokenizer, task, test, cfg, few_shot=few_shot)
    validation = load_validation(cfg, task, train, test)
    if validation:
        result["validation_accuracy"] = evaluate_into(it_dir / "validation.jsonl", model, tokenizer, task, validation,
                                                      cfg, few_shot=few_shot)["accuracy"]
    return result


def _finish_row(rundir: RunDir, it: int, stage: str, t0: float, result: dict, **extra) -> dict[str, Any]:
    row = {"iteration": it, "stage": stage, **result, "num_rationalized": 0, **extra,
           "seconds": round(time.time() - t0, 1), **phases.take(), "peak_memory_mb": round(peak_memory_mb())}
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
    t0, it_dir = phases.start(), rundir.iter_dir(1)
    examples = [{"prompt": task.format_question(p), "completion": task.format_completion(task.direct_answer(p))}
                for p in train]
    write_jsonl(it_dir / "train.jsonl", examples)
    model, trained = train_adapter(base, tokenizer, examples, cfg, cfg.train.start_steps, it_dir,
                                   seed=cfg.run.seed + 1)
    result = evaluate_stage(it_dir, model, tokenizer, task, train, test, cfg, few_shot=False)
    _finish_row(rundir, 1, "sft-direct", t0, result, num_train_examples=len(examples),
                steps=cfg.train.start_steps, train_loss=trained.train_loss, trained_tokens=trained.trained_tokens,
                train_world_size=trained.world_size)
    rundir.record_stop("schedule", f"{cfg.train.start_steps} steps on gold answers; generates nothing")
    return rundir.metrics()


def run_self_motivated(cfg: Config) -> list[dict[str, Any]]:
    """Self-motivated learning (Feng et al. 2024): rationales for the right and for wrong answers, SFT
    on the right ones (1), then a reward model on right-over-wrong pairs and RL from the SFT policy (2)."""
    from .rl import (make_reward, pair_accuracy_summary, preference_pairs, reward_model_standardisation, split_pairs,
                     train_reward_model, train_rl)

    started = start_run(cfg)
    if started is None:
        return RunDir(cfg.run.output_dir).metrics()
    rundir, task, train, test, tokenizer, base, finished = started
    sft_dir = rundir.iter_dir(1)
    if 1 not in finished:
        # --- rationales conditioned on the gold answer and on wrong ones, graded -----------
        t0 = phases.start()
        samples, free = sample_conditioned_rationales(base, tokenizer, task, train, cfg,
                                                      cache=sft_dir / "samples.partial.jsonl")
        write_jsonl(sft_dir / "samples.jsonl", samples)
        write_jsonl(sft_dir / "free_samples.jsonl", free)
        kept = keep_examples(task, train, [s for s in samples if not s["leaked"]])
        write_jsonl(sft_dir / "train.jsonl", kept)
        if not kept:
            log("self-motivated: no right rationale to train on, even hinted with the gold answer; stopping")
            rundir.record_stop("no_data", "no right rationale, even hinted")
            return rundir.metrics()

        # --- SFT on the right ones ------------------------------------------------------------
        steps = num_steps(1, cfg.train.start_steps, cfg.train.step_growth)
        model, trained = train_adapter(base, tokenizer, [{"prompt": k["prompt"], "completion": k["completion"]}
                                                         for k in kept], cfg, steps, sft_dir,
                                       seed=cfg.run.seed + 1)
        result = evaluate_stage(sft_dir, model, tokenizer, task, train, test, cfg, few_shot=False)
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

    if stopped_for_budget(rundir, cfg, "after SFT, before the reward model and RL"):
        return rundir.metrics()

    # --- reward model on right-over-wrong pairs of the same question -------------------------
    t0, rl_dir = phases.start(), rundir.iter_dir(2)
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
    scale = reward_model_standardisation(reward_model, tokenizer, train_pairs)
    reward = make_reward(task, {p.id: p for p in train}, reward_model=reward_model, tokenizer=tokenizer,
                         reward_model_weight=cfg.rl.reward_model_weight, reward_model_scale=scale,
                         correctness_weight=cfg.rl.correctness_weight, counter=counter,
                         num_generations=cfg.rl.num_generations, rollouts=rl_dir / "rollouts.jsonl")
    budget = Budget.from_rows(rundir.metrics(), cfg, trained=rm.trained_tokens)  # the reward model's training counts
    model, trained = train_rl(policy, tokenizer, task, train, reward, cfg, rl_dir, budget=budget, counter=counter)
    del reward_model
    release_memory()
    result = evaluate_stage(rl_dir, model, tokenizer, task, train, test, cfg, few_shot=False)
    summary = rl_summary(trained)
    summary["trained_tokens"] += rm.trained_tokens  # the reward model's training is part of the method's cost
    _finish_row(rundir, 2, "rl", t0, result, generated_tokens=counter.get("tokens", 0),
                reward_model_pairs=len(train_pairs), **pair_acc,
                reward_model_loss=rm.history[-1]["loss"] if rm.history else None,
                reward_model_trained_tokens=rm.trained_tokens, reward_model_init=cfg.rl.reward_model_init,
                reward_model_score_mean=scale[0], reward_model_score_sd=scale[1], **summary,
                **reward_false_positives(counter))
    rundir.record_stop(trained.stop_reason, f"RL: {summary['rl_steps']} steps")
    return rundir.metrics()


def run_grpo(cfg: Config) -> list[dict[str, Any]]:
    """GRPO rewarded by the task's grader alone, from ``rl.grpo_init``: "sft" (default) first trains an SFT
    adapter on the base model's own right rationales (greedy, few-shot, filtered by the grader: one STaR
    iteration without rationalization; stage 1), then runs GRPO from it on bare questions, KL-anchored to
    it (stage 2), as DeepSeekMath starts GRPO from an SFT model; "base" runs GRPO from a fresh adapter on
    few-shot prompts (the base needs them), anchored to the base (a fresh adapter starts equal to it).
    GRPO runs until the budget is spent (``rl.steps`` 0) or ``rl.steps``."""
    from peft import PeftModel
    from transformers import set_seed

    from .rl import make_reward, train_rl

    started = start_run(cfg)
    if started is None:
        return RunDir(cfg.run.output_dir).metrics()
    rundir, task, train, test, tokenizer, base, finished = started
    from_sft = cfg.rl.grpo_init == "sft"
    if from_sft and 1 not in finished:
        # --- the SFT start: the base's own right rationales ------------------------------------
        t0, sft_dir = phases.start(), rundir.iter_dir(1)
        clear_unfinished(sft_dir)
        cache = sft_dir / "samples.partial.jsonl"
        budget = Budget.for_iteration(rundir.metrics(), cfg, cache, started=t0)
        samples = sample_rationales(base, tokenizer, task, train, cfg, hint=False, few_shot=True, cache=cache,
                                    budget=budget)
        write_jsonl(sft_dir / "samples.jsonl", samples)
        kept = keep_examples(task, train, samples)
        write_jsonl(sft_dir / "train.jsonl", kept)
        if not kept:
            log("grpo: the base answered no training problem right, so no SFT start; try rl.grpo_init=base")
            rundir.record_stop("no_data", "no right rationale for the SFT start")
            return rundir.metrics()
        steps = num_steps(1, cfg.train.start_steps, cfg.train.step_growth)
        model, sft = train_adapter(base, tokenizer, [{"prompt": k["prompt"], "completion": k["completion"]}
                                                     for k in kept], cfg, steps, sft_dir, seed=cfg.run.seed + 1)
        result = evaluate_stage(sft_dir, model, tokenizer, task, train, test, cfg, few_shot=False)
        _finish_row(rundir, 1, "sft", t0, result, num_train_examples=len(kept), steps=steps,
                    generated_tokens=sum(s["tokens"] for s in samples), train_loss=sft.train_loss,
                    trained_tokens=sft.trained_tokens, train_world_size=sft.world_size,
                    budget_exhausted=budget.cut is not None)
        if distributed.is_main():
            cache.unlink(missing_ok=True)
        base = detach_adapter(model)
        del model
        release_memory()
    if stopped_for_budget(rundir, cfg, "before RL"):
        return rundir.metrics()

    # --- GRPO, rewarded by the grader ----------------------------------------------------------
    it = 2 if from_sft else 1
    t0, it_dir = phases.start(), rundir.iter_dir(it)
    it_dir.mkdir(parents=True, exist_ok=True)
    counter: dict[str, int] = {}
    if distributed.is_main():
        (it_dir / "rollouts.jsonl").unlink(missing_ok=True)  # an interrupted attempt's rollouts
    reward = make_reward(task, {p.id: p for p in train}, correctness_weight=1.0, counter=counter,
                         num_generations=cfg.rl.num_generations, rollouts=it_dir / "rollouts.jsonl")
    set_seed(cfg.run.seed + it)
    policy = (PeftModel.from_pretrained(base, str(rundir.iter_dir(1) / "adapter"), is_trainable=True) if from_sft
              else fresh_adapter(base, cfg.model))
    model, trained = train_rl(policy, tokenizer, task, train, reward, cfg, it_dir,
                              num_few_shot=0 if from_sft else cfg.task.num_few_shot,
                              budget=Budget.from_rows(rundir.metrics(), cfg), counter=counter)
    result = evaluate_stage(it_dir, model, tokenizer, task, train, test, cfg, few_shot=not from_sft)
    summary = rl_summary(trained)
    _finish_row(rundir, it, "rl", t0, result, generated_tokens=counter.get("tokens", 0), rl_init=cfg.rl.grpo_init,
                **summary, **reward_false_positives(counter))
    rundir.record_stop(trained.stop_reason, f"RL: {summary['rl_steps']} steps")
    return rundir.metrics()


def _last_logged(history: list[dict[str, Any]], key: str):
    return next((h[key] for h in reversed(history) if key in h), None)


def _first_logged(history: list[dict[str, Any]], key: str):
    return next((h[key] for h in history if key in h), None)


def run_dpo(cfg: Config) -> list[dict[str, Any]]:
    """Iterative DPO on the model's own pairs. Each iteration: the last model samples
    dpo.samples_per_problem rationales per problem; an SFT adapter is trained on the right ones (STaR's
    phase, fresh from the base); DPO on right-over-wrong pairs of the same question then continues that
    adapter (dpo.policy_init: sft) or trains a fresh one (base), with the SFT adapter as reference."""
    from peft import PeftModel
    from transformers import set_seed

    from .rl import preference_pairs, preference_steps, train_dpo

    started = start_run(cfg)
    if started is None:
        return RunDir(cfg.run.output_dir).metrics()
    rundir, task, train, test, tokenizer, base, finished = started
    last = max(finished)
    model = base if last == 0 else load_adapter(base, rundir.iter_dir(last) / "adapter")
    sample_cfg = copy.deepcopy(cfg)
    sample_cfg.sampling.temperature = cfg.dpo.temperature
    stop = ("iterations", f"star.iterations = {cfg.star.iterations} finished")
    for it in range(last + 1, cfg.star.iterations + 1):
        spent = budget_spent(rundir.metrics(), cfg)
        if spent:
            log(f"dpo: budget reached ({spent}); stopping before iteration {it}")
            stop = ("budget", spent)
            break
        t0, it_dir = phases.start(), rundir.iter_dir(it)
        clear_unfinished(it_dir)
        for name in ("sft", "dpo_trainer"):
            shutil.rmtree(it_dir / name, ignore_errors=True)
        cache = it_dir / "samples.partial.jsonl"  # kept across a restart: sampling resumes from it
        budget = Budget.for_iteration(rundir.metrics(), cfg, cache, started=t0)

        # --- several rationales per problem, graded ------------------------------------------
        samples = sample_rationales(model, tokenizer, task, train, sample_cfg, hint=False,
                                    few_shot=model is base or cfg.sampling.few_shot_after_training, cache=cache,
                                    num_samples=cfg.dpo.samples_per_problem, budget=budget)
        write_jsonl(it_dir / "samples.jsonl", samples)
        kept = keep_examples(task, train, samples)
        pairs = preference_pairs(task, train, samples, cfg.dpo.max_pairs_per_problem)
        write_jsonl(it_dir / "train.jsonl", kept)
        write_jsonl(it_dir / "pairs.jsonl", pairs)
        solved = {s["id"] for s in samples if s["correct"]}
        log(f"dpo iteration {it}: {len(solved)}/{len(train)} problems answered right at least once, "
            f"{len(kept)} right rationales, {len(pairs)} right-over-wrong pairs")
        if not kept or (not pairs and cfg.dpo.pairs_from == "previous"):
            log(f"dpo iteration {it}: no {'right rationale' if not kept else 'pair'} to train on; stopping. Sample "
                "more per problem (dpo.samples_per_problem) or at a higher dpo.temperature.")
            stop = ("budget", budget.cut) if budget.cut else ("no_data", f"iteration {it}: no "
                                                              f"{'right rationale' if not kept else 'pair'}")
            break

        # --- SFT on the right ones, fresh from the base: the DPO reference -----------------------
        base = detach_adapter(model)
        del model
        release_memory()
        steps = training_steps(it, len(kept), cfg.train)
        sft_model, sft = train_adapter(base, tokenizer, [{"prompt": k["prompt"], "completion": k["completion"]}
                                                         for k in kept], cfg, steps, it_dir / "sft",
                                       seed=cfg.run.seed + it)
        sft_eval: dict[str, Any] = {}
        if cfg.dpo.evaluate_sft:  # DPO's starting point, on the same problems: what DPO itself changes
            with phases.phase("eval"):
                sft_eval = {"sft_accuracy": evaluate_into(it_dir / "sft_eval.jsonl", sft_model, tokenizer, task, test,
                                                          cfg, few_shot=cfg.sampling.few_shot_after_training)["accuracy"]}
        # --- the pairs: sampled from the SFT adapter DPO starts from (dpo.pairs_from: policy) -------------
        policy_samples: list[dict[str, Any]] = []
        if cfg.dpo.pairs_from == "policy" and not budget.cut:
            pair_cache = it_dir / "pairs.partial.jsonl"
            pair_budget = Budget.for_iteration(rundir.metrics(), cfg, pair_cache, started=t0)
            pair_budget.tokens += sum(s["tokens"] for s in samples)  # this iteration's first sampling
            policy_samples = sample_rationales(sft_model, tokenizer, task, train, sample_cfg, hint=False,
                                               few_shot=cfg.sampling.few_shot_after_training, cache=pair_cache,
                                               num_samples=cfg.dpo.samples_per_problem, budget=pair_budget)
            write_jsonl(it_dir / "policy_samples.jsonl", policy_samples)
            pairs = preference_pairs(task, train, policy_samples, cfg.dpo.max_pairs_per_problem)
            write_jsonl(it_dir / "pairs.jsonl", pairs)
            budget.cut = budget.cut or pair_budget.cut
            if distributed.is_main():
                pair_cache.unlink(missing_ok=True)
            log(f"dpo iteration {it}: the SFT adapter's {len(policy_samples)} samples gave {len(pairs)} pairs")
        base = detach_adapter(sft_model)
        del sft_model
        if not pairs:
            log(f"dpo iteration {it}: no right-over-wrong pair to train on; stopping. Sample more per problem "
                "(dpo.samples_per_problem) or at a higher dpo.temperature.")
            stop = ("budget", budget.cut) if budget.cut else ("no_data", f"iteration {it}: no pair")
            model = base
            break

        # --- DPO on right-over-wrong pairs, held to the SFT adapter --------------------------------
        reference = it_dir / "sft" / "adapter"
        set_seed(cfg.run.seed + it)
        policy = (PeftModel.from_pretrained(base, str(reference), is_trainable=True)
                  if cfg.dpo.policy_init == "sft" else fresh_adapter(base, cfg.model))
        dpo_steps = preference_steps(len(pairs), cfg.dpo.epochs, cfg.dpo.batch_size, cfg.dpo.steps)
        model, dpo = train_dpo(policy, tokenizer, pairs, cfg, it_dir, steps=dpo_steps,
                               learning_rate=cfg.dpo.learning_rate, batch_size=cfg.dpo.batch_size,
                               beta=cfg.dpo.beta, nll_weight=cfg.dpo.nll_weight, reference=reference)
        result = evaluate_stage(it_dir, model, tokenizer, task, train, test, cfg, few_shot=cfg.sampling.few_shot_after_training)
        _finish_row(rundir, it, "dpo", t0, result, num_train_examples=len(kept), num_pairs=len(pairs),
                    num_correct_samples=len(solved), train_accuracy=len(solved) / len(train), steps=steps,
                    train_loss=sft.train_loss, dpo_steps=dpo_steps, dpo_loss=dpo.train_loss,
                    dpo_reward_accuracy=_last_logged(dpo.history, "rewards/accuracies"),
                    dpo_chosen_logp_first=_first_logged(dpo.history, "logps/chosen"),
                    dpo_chosen_logp_last=_last_logged(dpo.history, "logps/chosen"),
                    dpo_rejected_logp_first=_first_logged(dpo.history, "logps/rejected"),
                    dpo_rejected_logp_last=_last_logged(dpo.history, "logps/rejected"),
                    pairs_from=cfg.dpo.pairs_from, trained_tokens=sft.trained_tokens + dpo.trained_tokens,
                    generated_tokens=sum(s["tokens"] for s in samples + policy_samples),
                    budget_exhausted=budget.cut is not None, **sft_eval)
        if distributed.is_main():
            cache.unlink(missing_ok=True)
        if budget.cut:
            log(f"dpo iteration {it}: budget reached while sampling ({budget.cut}); last iteration")
            stop = ("budget", budget.cut)
            break
    rundir.record_stop(*stop)
    return rundir.metrics()


def verifier_pairs(task: Task, train: list[Problem], rundir: RunDir, generations: list[int],
                   max_pairs_per_problem: int) -> list[dict[str, Any]]:
    """V-STaR's verifier data: right-over-wrong pairs from the unhinted samples of every generator
    iteration together (a right rationale of iteration 1 pairs with a wrong one of iteration 2)."""
    from .rl import preference_pairs

    samples = [s for j in generations for s in read_jsonl(rundir.iter_dir(j) / "samples.jsonl")
               if s["phase"] == "rationale"]
    return preference_pairs(task, train, samples, max_pairs_per_problem)


def run_v_star(cfg: Config) -> list[dict[str, Any]]:
    """V-STaR (Hosseini et al. 2024): STaR's generator (v_star.samples_per_problem samples per problem at
    v_star.temperature, no rationalization; ``method_config``), then one more stage: a verifier trained
    with DPO on right-over-wrong pairs from all the generator's iterations, starting from and held to the
    first iteration's SFT adapter. At test time the last generator draws v_star.k candidates per problem;
    the row reports verifier best-of-k (its accuracy and eval.jsonl), majority@k and greedy on them."""
    from peft import PeftModel

    from .rl import load_verifier, preference_steps, train_dpo, verifier_scores

    done = RunDir(cfg.run.output_dir).metrics()
    if any(r.get("stage") == "verifier" for r in done):
        # the verifier is the last stage, whenever the generator stopped (its budget, validation): finished
        log(f"{cfg.run.output_dir}: v-star is finished (the verifier is trained)")
        return done
    rows = run_star(cfg)
    generations = [r["iteration"] for r in rows if r.get("stage") == "star"]
    if not generations:
        log("v-star: the generator trained no adapter; no verifier")
        return rows
    rundir, last = RunDir(cfg.run.output_dir), max(generations)
    t0, it, k = phases.start(), last + 1, cfg.v_star.k
    it_dir = rundir.iter_dir(it)
    clear_unfinished(it_dir)
    for name in ("verifier", ".verifier.tmp", "dpo_trainer"):
        shutil.rmtree(it_dir / name, ignore_errors=True)
    task, train, test = build_task(cfg)
    tokenizer, base = load_tokenizer(cfg.model.name_or_path), load_base_model(cfg.model)

    # --- the verifier: DPO on every iteration's right-over-wrong pairs --------------------------
    pairs = verifier_pairs(task, train, rundir, generations, cfg.v_star.max_pairs_per_problem)
    write_jsonl(it_dir / "pairs.jsonl", pairs)
    if not pairs:  # the generator's last row stands; nothing to train a verifier on
        log("v-star: no question got both a right and a wrong sample in any iteration, so no verifier; sample "
            "more per problem (v_star.samples_per_problem) or at a higher v_star.temperature")
        return rundir.metrics()
    reference = rundir.iter_dir(generations[0]) / "adapter"  # V-STaR: from the first SFT generator
    policy = PeftModel.from_pretrained(base, str(reference), is_trainable=True)
    verifier_steps = preference_steps(len(pairs), cfg.v_star.epochs, cfg.v_star.batch_size, cfg.v_star.steps)
    verifier, trained = train_dpo(policy, tokenizer, pairs, cfg, it_dir / "verifier_training", steps=verifier_steps,
                                  learning_rate=cfg.v_star.learning_rate, batch_size=cfg.v_star.batch_size,
                                  beta=cfg.v_star.beta)
    if distributed.is_main():  # rank 0 keeps the run directory; the others wait for the move
        shutil.move(str(it_dir / "verifier_training" / "adapter"), str(it_dir / "verifier"))
        shutil.rmtree(it_dir / "verifier_training", ignore_errors=True)
    distributed.barrier()
    base = detach_adapter(verifier)
    del verifier
    release_memory()

    # --- k candidates per test problem from the last generator, scored by the verifier -----------
    gen = load_adapter(base, rundir.iter_dir(last) / "adapter")
    num_shots = cfg.task.num_few_shot if cfg.sampling.few_shot_after_training else 0
    prompts = [task.prompt(p, num_few_shot=num_shots) for p in test for _ in range(k)]
    with phases.phase("candidates"):
        gens = generator(cfg)(gen, tokenizer, prompts, batch_size=cfg.eval.batch_size,
                              # drawn as the verifier's training samples were, so it scores what it learned on
                              max_new_tokens=cfg.eval.max_new_tokens, temperature=cfg.v_star.temperature,
                              top_p=cfg.sampling.top_p, stop_strings=task.stop_strings, desc=f"candidates @{k}")
    texts = [task.clean_completion(g.text) for g in gens]
    base = detach_adapter(gen)
    del gen
    verifier = load_verifier(base, it_dir / "verifier", reference)
    with phases.phase("verifier_scoring"):
        scores = verifier_scores(verifier, tokenizer, [task.format_question(p) for p in test for _ in range(k)],
                                 [task.format_completion(t) for t in texts], cfg.v_star.beta)
    candidates = []
    for n, (p, text) in enumerate(zip((p for p in test for _ in range(k)), texts)):
        candidates.append({"id": p.id, "sample": n % k, "completion": text, "answer": task.extract_answer(text),
                           "correct": task.is_correct(text, p), "verifier_score": scores[n],
                           "tokens": gens[n].num_tokens})
    write_jsonl(it_dir / "candidates.jsonl", candidates)
    row = choose_best_of_k(task, test, candidates, k,
                           greedy={r["id"]: r["correct"] for r in read_jsonl(rundir.iter_dir(last) / "eval.jsonl")})
    write_jsonl(it_dir / "eval.jsonl", row.pop("records"))
    result = {key: row.pop(key) for key in ("accuracy", "num_eval", "num_correct", "ci_low", "ci_high",
                                            "accuracy_by_difficulty")}
    _finish_row(rundir, it, "verifier", t0, result, **row, num_pairs=len(pairs), verifier_steps=verifier_steps,
                verifier_loss=trained.train_loss,
                verifier_reward_accuracy=_last_logged(trained.history, "rewards/accuracies"),
                trained_tokens=trained.trained_tokens, generator_iteration=last,
                eval_tokens=sum(c["tokens"] for c in candidates), candidate_temperature=cfg.v_star.temperature)
    return rundir.metrics()


def choose_best_of_k(task, problems, candidates: list[dict[str, Any]], k: int,
                     greedy: dict[str, bool]) -> dict[str, Any]:
    """Verifier best-of-k, majority@k and pass@k on the same k candidates per problem, and greedy, each
    with its 95% Wilson interval; ``records`` are the best-of-k choices (the stage's eval.jsonl).

    >>> from star_lite.tasks import load_task, Problem
    >>> t = load_task("arithmetic", min_digits=1, max_digits=1)
    >>> p = Problem("a", "What is 1 + 1?", "2")
    >>> c = [{"id": "a", "completion": f"The answer is {x}.", "answer": x, "correct": x == "2",
    ...       "verifier_score": s} for x, s in (("3", 0.1), ("3", 0.2), ("2", 0.9))]
    >>> r = choose_best_of_k(t, [p], c, 3, greedy={"a": False})
    >>> r["accuracy"], r["maj@3"], r["pass@3"], r["greedy_accuracy"]
    (1.0, 0.0, 1.0, 0.0)
    """
    by_id: dict[str, list[dict[str, Any]]] = {}
    for c in candidates:
        by_id.setdefault(c["id"], []).append(c)
    best = [max(by_id[p.id], key=lambda c: c["verifier_score"]) for p in problems]
    result = score(task, problems, [c["completion"] for c in best])
    records = [{"id": p.id, "question": p.question, "gold": p.answer, "completion": c["completion"],
                "answer": c["answer"], "correct": ok, "difficulty": task.difficulty(p),
                "verifier_score": c["verifier_score"]} for p, c, ok in zip(problems, best, result.pop("correct"))]
    n = len(problems)
    out = {**result, "records": records, f"best_of@{k}": result["accuracy"]}
    majority = [majority_correct([c["answer"] for c in by_id[p.id]], [c["correct"] for c in by_id[p.id]])
                for p in problems]
    for name, hits in ((f"maj@{k}", majority), (f"pass@{k}", [any(c["correct"] for c in by_id[p.id]) for p in problems]),
                       ("greedy_accuracy", [bool(greedy.get(p.id)) for p in problems])):
        low, high = wilson(sum(hits), n)
        out.update({name: sum(hits) / n if n else 0.0, f"{name}_ci_low": low, f"{name}_ci_high": high})
    right = [c["verifier_score"] for c in candidates if c["correct"]]
    wrong = [c["verifier_score"] for c in candidates if not c["correct"]]
    out["verifier_score_right_mean"] = sum(right) / len(right) if right else None
    out["verifier_score_wrong_mean"] = sum(wrong) / len(wrong) if wrong else None
    out.update(verifier_ranking(by_id))
    return out


def verifier_ranking(by_id: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """How well the verifier ranks within a problem, which is all best-of-k uses: the share of (right,
    wrong) candidate pairs of the same problem where the right one scores higher (ties count half; 0.5 =
    chance), with the number of pairs and a 95% Wilson interval.

    >>> c = {"a": [{"correct": True, "verifier_score": 2.0}, {"correct": False, "verifier_score": 1.0},
    ...            {"correct": False, "verifier_score": 3.0}]}
    >>> verifier_ranking(c)["verifier_pair_accuracy"], verifier_ranking(c)["verifier_pairs"]
    (0.5, 2)
    """
    wins, n = 0.0, 0
    for cands in by_id.values():
        for r in (c["verifier_score"] for c in cands if c["correct"]):
            for w in (c["verifier_score"] for c in cands if not c["correct"]):
                wins += 1.0 if r > w else 0.5 if r == w else 0.0
                n += 1
    low, high = wilson(round(wins), n) if n else (None, None)
    return {"verifier_pair_accuracy": wins / n if n else None, "verifier_pairs": n,
            "verifier_pair_ci_low": low, "verifier_pair_ci_high": high}
