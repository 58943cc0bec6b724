"""dpo: iterative DPO (Rafailov et al. 2023; Iterative RPO, Pang et al. 2024) on the model's own
right-over-wrong pairs of the same question, held to that iteration's SFT adapter."""

from __future__ import annotations

import copy
import shutil
from typing import Any

from .. import distributed, phases
from ..budget import Budget, budget_spent
from ..config import Config
from ..evaluation import evaluate_into
from ..loop import clear_unfinished, keep_examples, log, sample_rationales, start_run
from ..models import detach_adapter, fresh_adapter, load_adapter
from ..rundir import RunDir, write_jsonl
from ..trainers.sft import train_adapter
from ..training import release_memory, training_steps
from .common import evaluate_stage, finish_row, first_logged, last_logged
from .registry import register


@register("dpo", summary="SFT, then DPO on the SFT adapter's own right-over-wrong pairs, each iteration",
          sections=("dpo",))
def run_dpo(cfg: Config) -> list[dict[str, Any]]:
    """Iterative DPO on the model's own pairs. Each iteration: the last model samples
    dpo.samples_per_problem rationales per problem; an SFT adapter is trained on the right ones (STaR's
    phase, fresh from the base); DPO on right-over-wrong pairs of the same question then continues that
    adapter (dpo.policy_init: sft) or trains a fresh one (base), with the SFT adapter as reference."""
    from peft import PeftModel
    from transformers import set_seed

    from ..trainers.dpo import train_dpo
    from ..trainers.pairs import preference_pairs, preference_steps

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
            pair_budget = Budget.for_iteration(rundir.metrics(), cfg, pair_cache, started=t0, earlier=samples)
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
        finish_row(rundir, it, "dpo", t0, result, num_train_examples=len(kept), num_pairs=len(pairs),
                    num_correct_samples=len(solved), train_accuracy=len(solved) / len(train), steps=steps,
                    train_loss=sft.train_loss, dpo_steps=dpo_steps, dpo_loss=dpo.train_loss,
                    dpo_reward_accuracy=last_logged(dpo.history, "rewards/accuracies"),
                    dpo_chosen_logp_first=first_logged(dpo.history, "logps/chosen"),
                    dpo_chosen_logp_last=last_logged(dpo.history, "logps/chosen"),
                    dpo_rejected_logp_first=first_logged(dpo.history, "logps/rejected"),
                    dpo_rejected_logp_last=last_logged(dpo.history, "logps/rejected"),
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
