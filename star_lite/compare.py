"""Comparison mode: every listed method on one task, split, grader and budget, once per seed.

    star-lite compare configs/compare_reasoning.yaml
    -> runs/compare/seed_<s>/<method>/   one run directory per seed and method (each resumes)
       comparison.csv                    one row per method x seed x stage: accuracy with its 95%
                                         interval, training examples, generated and trained tokens,
                                         cost, wall seconds, budget, peak memory (+ pass@k, maj@k;
                                         v-star: best_of@k and greedy_accuracy, with intervals)
       comparison.md                     accuracy over seeds (mean +- sd), paired differences
                                         against compare.reference with intervals and McNemar
                                         p-values, then every stage
       accuracy_by_*.png                 accuracy (error bars: 95% interval) against iteration,
                                         generated tokens, all tokens (generated + trained), seconds

Every seed sees the same test problems (unless compare.resample_split), so two methods are
compared problem by problem: a paired difference, pooled over seeds.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import csv
import fcntl
import io
import shutil
import statistics
from pathlib import Path
from typing import Any

import yaml

from . import distributed, reuse
from . import workers as workers_lib
from .config import Config, ConfigError, from_dict, tune_points
from .loop import log
from .rundir import (LEGACY_VALUES, RunDir, adopt_legacy_values, append_jsonl, read_jsonl, with_legacy_values,
                     write_atomic, write_jsonl)
from .stats import distinguishable, paired_difference, row_interval, wilson

COLUMNS = ["method", "seed", "iteration", "stage", "accuracy", "ci_low", "ci_high", "num_eval",
           "num_train_examples", "generated_tokens", "trained_tokens", "cumulative_generated_tokens",
           "cumulative_trained_tokens", "cumulative_cost_tokens", "budget_tokens", "seconds",
           "cumulative_seconds", "budget_seconds", "peak_memory_mb"]

AXES = {  # x of each comparison plot: column -> (axis label, file name)
    "iteration": ("iteration (0 = few-shot base model)", "accuracy_by_iteration.png"),
    "cumulative_generated_tokens": ("generated tokens (training data and RL rollouts)", "accuracy_by_tokens.png"),
    "cumulative_cost_tokens": ("all tokens: generated + trained on (forward and backward)", "accuracy_by_cost.png"),
    "cumulative_seconds": ("wall seconds (reused work included)", "accuracy_by_seconds.png"),
}


def seed_dir(cfg: Config, seed: int) -> Path:
    """Where one seed's method directories live."""
    return Path(cfg.compare.output_dir) / f"seed_{seed}"


def seed_config(cfg: Config, seed: int) -> Config:
    """The shared config for one seed: run seed, adapter init and sampling follow ``seed``; the
    problems stay those of the config's own seed unless ``compare.resample_split``."""
    c = copy.deepcopy(cfg)
    c.run.seed = seed
    c.compare.output_dir = str(seed_dir(cfg, seed))
    if not cfg.compare.resample_split and cfg.task.split_seed is None:
        c.task.split_seed = cfg.run.seed
    return c


def _correct_by_id(path: Path) -> dict[str, bool]:
    return {r["id"]: bool(r["correct"]) for r in read_jsonl(path)}


def _eval_records(out: Path, seed: int, method: str, iteration: int) -> dict[str, bool]:
    return _correct_by_id(out / f"seed_{seed}" / method / f"iter_{iteration:03d}" / "eval.jsonl")


def comparison_rows(cfg: Config) -> list[dict[str, Any]]:
    """One row per method, seed and stage, with costs summed up to that stage."""
    rows = []
    for seed in cfg.compare.seeds:
        for method in cfg.compare.methods:
            path = seed_dir(cfg, seed) / method / "metrics.jsonl"
            generated = trained = seconds = 0.0
            for r in sorted(read_jsonl(path), key=lambda r: r["iteration"]):
                generated += r.get("generated_tokens", 0)
                trained += r.get("trained_tokens", 0)
                seconds += r.get("seconds", 0.0) + r.get("seconds_reused", 0.0)  # reused work costs what it cost
                n = r.get("num_eval", 0)
                lo, hi = row_interval(r)
                row = {"method": method, "seed": seed, "iteration": r["iteration"], "stage": r.get("stage", ""),
                       "accuracy": round(r["accuracy"], 4), "ci_low": round(lo, 4), "ci_high": round(hi, 4),
                       "num_eval": n, "num_train_examples": r.get("num_train_examples", 0),
                       "generated_tokens": r.get("generated_tokens", 0), "trained_tokens": r.get("trained_tokens", 0),
                       "cumulative_generated_tokens": int(generated), "cumulative_trained_tokens": int(trained),
                       "cumulative_cost_tokens": int(generated + trained), "budget_tokens": cfg.run.budget_tokens,
                       "seconds": r.get("seconds", 0.0), "cumulative_seconds": round(seconds, 1),
                       "budget_seconds": cfg.run.budget_seconds, "peak_memory_mb": r.get("peak_memory_mb")}
                # pass@k, maj@k; v-star's best-of-k and greedy on the same candidates, with their intervals
                row.update({k: round(v, 4) for k, v in r.items()
                            if k.startswith(("pass@", "maj@", "best_of@", "greedy_accuracy")) and v is not None})
                for key in ("num_rejected_hint", "reward_model_pair_accuracy", "reward_model_heldout_pairs",
                            "reward_model_pair_ci_low", "reward_model_pair_ci_high", "num_pairs", "num_sampled_problems",
                            "rl_steps", "rl_reward_first_quarter", "rl_reward_last_quarter", "rl_zero_variance_share",
                            "rl_groups_dropped", "rl_kl_last", "rl_update_norm", "rl_completion_length", "dpo_steps",
                            "verifier_steps", "verifier_pair_accuracy", "verifier_pairs", "verifier_pair_ci_low",
                            "verifier_pair_ci_high", "false_positive_share", "rl_false_positive_share", "sft_accuracy"):
                    if r.get(key) is not None:
                        row[key] = round(r[key], 4) if isinstance(r[key], float) else r[key]
                row["spent_tokens"] = int(generated + trained * (cfg.run.budget_axis == "all"))
                row.update({k: v for k, v in r.items() if k in PHASES or k in ("shared_from", "seconds_reused")})
                rows.append(row)
            stop = RunDir(seed_dir(cfg, seed) / method).stop()
            if rows and rows[-1]["method"] == method and rows[-1]["seed"] == seed:
                rows[-1]["stop_reason"] = stop.get("stop_reason")  # on the method's last stage
    return rows


def budget_lines(cfg: Config, rows: list[dict[str, Any]]) -> list[str]:
    """The budget table: what each method spent of run.budget_tokens per seed, and why it stopped. A method
    under 90% of the budget with no recorded stop reason is marked: its accuracy is not a verdict on it."""
    if not cfg.run.budget_tokens:
        return []
    axis = "generated tokens" if cfg.run.budget_axis == "generated" else "generated + trained tokens"
    lines = ["## Budget spent", "",
             f"run.budget_tokens = {cfg.run.budget_tokens:,} {axis} per method and seed (run.budget_axis: "
             f"{cfg.run.budget_axis}). Stop reasons: budget (spent), iterations / steps (its configured length "
             "ended first), validation_stopped_rising, no_data, schedule (generates nothing). **Under 90% with no "
             "recorded reason** marks a method that did not get its turn.", "",
             "| method | seed | spent / budget | share | stop reason | |", "| --- | ---: | ---: | ---: | --- | --- |"]
    for (method, seed), r in final_rows(rows).items():
        share = r["spent_tokens"] / cfg.run.budget_tokens
        reason = r.get("stop_reason")
        mark = "**under 90% with no recorded reason**" if share < 0.9 and not reason else (
            f"under 90%: stopped for {reason}" if share < 0.9 and reason != "budget" else "")
        lines.append(f"| {method} | {seed} | {r['spent_tokens']:,} / {cfg.run.budget_tokens:,} | {share:.0%} | "
                     f"{reason or '–'} | {mark} |")
    return lines + [""]


PHASES = {  # seconds_<phase> of a metrics row -> its column in "Time by phase"
    "seconds_sampling": "sampling", "seconds_rationalization": "rationalization", "seconds_training": "SFT",
    "seconds_reward_model": "reward model", "seconds_rl_rollouts": "RL rollouts", "seconds_rl_updates": "RL updates",
    "seconds_dpo": "DPO", "seconds_candidates": "candidates", "seconds_verifier_scoring": "verifier scoring",
    "seconds_eval": "evaluation"}


def time_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Where each method's wall time went, from its rows' own phase timers: mean over seeds, seconds.
    A row copied from another run (the shared few-shot evaluation) counts where it ran only."""
    per: dict[str, list[dict[str, float]]] = {}
    for r in rows:
        if r.get("shared_from"):
            continue
        seeds = per.setdefault(r["method"], [])
        if not seeds or seeds[-1]["seed"] != r["seed"]:
            seeds.append({"seed": r["seed"]})
        for key in [*PHASES, "seconds", "seconds_reused"]:
            seeds[-1][key] = seeds[-1].get(key, 0.0) + (r.get(key) or 0.0)
    if not per:
        return []
    shown = [k for k in PHASES if any(s.get(k) for seeds in per.values() for s in seeds)]
    reused = any(s.get("seconds_reused") for seeds in per.values() for s in seeds)
    lines = ["## Time by phase", "",
             "Wall seconds per method and seed, mean over seeds, from each stage's own timers; other: loading, "
             "saving and the rest. Processes run side by side share the cores, so their seconds run slower."
             + (" Reused: seconds of work another run of the comparison (another method, or another seed) had "
                "already computed alike (compare.reuse), handed over instead of run again; counted in the "
                "method's cost, not in its total here." if reused else ""), "",
             "| method | " + " | ".join(PHASES[k] for k in shown) + " | other | total |" + (" reused |" if reused else ""),
             "| --- |" + " ---: |" * (len(shown) + 2 + reused)]
    total = saved = 0.0
    for method, seeds in per.items():
        mean = {k: sum(s.get(k, 0.0) for s in seeds) / len(seeds) for k in [*shown, "seconds", "seconds_reused"]}
        other = max(0.0, mean["seconds"] - sum(mean[k] for k in shown))
        total += sum(s["seconds"] for s in seeds)
        saved += sum(s.get("seconds_reused", 0.0) for s in seeds)
        lines.append(f"| {method} | " + " | ".join(f"{mean[k]:,.0f}" for k in shown) +
                     f" | {other:,.0f} | {mean['seconds']:,.0f} |" + (f" {mean['seconds_reused']:,.0f} |" if reused else ""))
    return lines + ["", f"All methods and seeds: {total / 60:,.1f} minutes of run time (the sum over runs)"
                    + (f"; {saved / 60:,.1f} more minutes of work reused, not run again" if saved else "") + ".", ""]


def diagnostic_lines(rows: list[dict[str, Any]]) -> list[str]:
    """RL, DPO, reward-model and verifier diagnostics of each seed's run: did it learn, and from what."""
    lines = []
    rl = [r for r in rows if r.get("rl_steps") is not None]
    if rl:
        lines += ["## RL diagnostics", "",
                  "Per RL stage: steps, mean reward over the first and last quarter of the steps, the mean share of "
                  "zero-variance groups trained on (no gradient), groups dropped by dynamic sampling, the last KL to "
                  "the reference, the adapter's update norm, mean completion length, and the stop reason. Per-step "
                  "curves: `star-lite report` on the method's run directory.", "",
                  "| method | seed | steps | reward first → last quarter | zero-variance share | dropped | KL | "
                  "update norm | length | stop |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in rl:
            lines.append(f"| {r['method']} | {r['seed']} | {r['rl_steps']} | {_fmt(r.get('rl_reward_first_quarter'))} → "
                         f"{_fmt(r.get('rl_reward_last_quarter'))} | {_fmt(r.get('rl_zero_variance_share'), 2)} | "
                         f"{r.get('rl_groups_dropped', 0)} | {_fmt(r.get('rl_kl_last'), 4)} | "
                         f"{_fmt(r.get('rl_update_norm'), 4)} | {_fmt(r.get('rl_completion_length'), 1)} | "
                         f"{r.get('stop_reason') or '–'} |")
        lines.append("")
    scored = [(r, kind) for r in rows for kind in ("reward_model", "verifier")
              if r.get(f"{kind}_pair_accuracy") is not None]
    if scored:
        lines += ["## Reward model and verifier: pairwise accuracy", "",
                  "Reward model: held-out training questions, before RL uses it. Verifier: (right, wrong) candidate "
                  "pairs of the same test problem, which is all best-of-k uses. 0.5 is chance.", "",
                  "| method | seed | model | pairwise accuracy [95% CI] | pairs | |", "| --- | ---: | --- | ---: | ---: | --- |"]
        for r, kind in scored:
            lo, hi = r.get(f"{kind}_pair_ci_low"), r.get(f"{kind}_pair_ci_high")
            n = r.get("reward_model_heldout_pairs" if kind == "reward_model" else "verifier_pairs")
            chance = lo is not None and lo <= 0.5 <= hi
            lines.append(f"| {r['method']} | {r['seed']} | {kind.replace('_', ' ')} | "
                         f"{r[f'{kind}_pair_accuracy']:.3f} [{_fmt(lo)}, {_fmt(hi)}] | {n} | "
                         f"{'**not distinguishable from chance**' if chance else ''} |")
        lines.append("")
    return lines


# the last stage of these methods builds on an earlier model; what it adds is measured against that one
_STARTS = {"rl": "its SFT stage", "dpo": "the SFT adapter DPO started from", "verifier": "the generator's greedy answers"}


def stage_gain_lines(cfg: Config, rows: list[dict[str, Any]]) -> list[str]:
    """What each RL, DPO or verifier stage added over the model it started from, paired on the same test
    problems per seed and pooled over seeds: the difference, its 95% interval and McNemar p."""
    out = Path(cfg.compare.output_dir)
    table = []  # (method, seed or "pooled", stage, paired difference)
    pooled: dict[str, tuple[str, list[bool], list[bool], int]] = {}  # method -> stage, answers, seeds
    for (method, seed), r in final_rows(rows).items():
        it = r["iteration"]
        run = out / f"seed_{seed}" / method
        start = (run / f"iter_{it:03d}" / "sft_eval.jsonl" if r["stage"] == "dpo" else
                 run / f"iter_{it - 1:03d}" / "eval.jsonl" if r["stage"] in ("rl", "verifier") and it > 1 else None)
        if start is None or not start.exists():
            continue
        mine, theirs = _eval_records(out, seed, method, it), _correct_by_id(start)
        ids = sorted(mine.keys() & theirs.keys())
        a, b = [mine[i] for i in ids], [theirs[i] for i in ids]
        table.append((method, str(seed), r["stage"], paired_difference(a, b)))
        _, all_a, all_b, seeds = pooled.get(method, (r["stage"], [], [], 0))
        pooled[method] = (r["stage"], all_a + a, all_b + b, seeds + 1)
    if not table:
        return []
    table += [(m, "pooled", stage, paired_difference(a, b)) for m, (stage, a, b, seeds) in pooled.items() if seeds > 1]
    lines = ["## What the last stage added", "",
             "Each RL, DPO or verifier stage against the model it started from (" + "; ".join(
                 f"{k}: {v}" for k, v in _STARTS.items()) + "), paired on the same test problems: 95% interval "
             "(Newcombe) and exact McNemar p. An interval covering 0: the stage's own effect is not distinguishable "
             "at this size.", "",
             "| method | seed | stage | difference | 95% CI | pairs | McNemar p | |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |"]
    for method, seed, stage, d in sorted(table, key=lambda x: (x[0], x[1] == "pooled", x[1])):
        mark = "" if distinguishable(d["ci_low"], d["ci_high"]) else "not distinguishable"
        lines.append(f"| {method} | {seed} | {stage} | {d['difference']:+.3f} | [{d['ci_low']:+.3f}, "
                     f"{d['ci_high']:+.3f}] | {d['n']} | {d['p_value']:.3g} | {mark} |")
    return lines + [""]


def final_rows(rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """The last stage each method reached, per seed: what the method delivers."""
    last: dict[tuple[str, int], dict[str, Any]] = {}
    for r in rows:
        key = (r["method"], r["seed"])
        if key not in last or r["iteration"] > last[key]["iteration"]:
            last[key] = r
    return last


def summarize(cfg: Config, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy over seeds and paired differences against ``compare.reference``, per method.

    Pairs are (method, reference) results on the same problem in the same seed, pooled over
    seeds. Problems repeat across seeds, so pooled pairs are not independent: the interval is
    the one a single seed of that size would give, a little narrow for three seeds' spread.
    """
    out = Path(cfg.compare.output_dir)
    last = final_rows(rows)
    ref = cfg.compare.reference
    summary: dict[str, Any] = {"reference": ref, "methods": {}}
    for method in cfg.compare.methods:
        mine = [last[(method, s)] for s in cfg.compare.seeds if (method, s) in last]
        if not mine:
            continue
        accs = [r["accuracy"] for r in mine]
        correct = sum(round(r["accuracy"] * r["num_eval"]) for r in mine)
        n = sum(r["num_eval"] for r in mine)
        lo, hi = wilson(correct, n)
        entry = {"stage": mine[-1]["stage"], "iteration": mine[-1]["iteration"],
                 "by_seed": {r["seed"]: r["accuracy"] for r in mine}, "mean": statistics.fmean(accs),
                 "sd": statistics.stdev(accs) if len(accs) > 1 else None, "pooled": correct / n if n else 0.0,
                 "ci_low": lo, "ci_high": hi, "n": n, "cost_tokens": statistics.fmean(
                     r["cumulative_cost_tokens"] for r in mine),
                 "generated_tokens": max(r["cumulative_generated_tokens"] for r in mine),
                 "seconds": statistics.fmean(r["cumulative_seconds"] for r in mine)}
        if method != ref:
            a, b = [], []
            for r in mine:
                theirs = last.get((ref, r["seed"]))
                if theirs is None:
                    continue
                x = _eval_records(out, r["seed"], method, r["iteration"])
                y = _eval_records(out, r["seed"], ref, theirs["iteration"])
                for pid in sorted(x.keys() & y.keys()):
                    a.append(x[pid])
                    b.append(y[pid])
            if a:
                entry["paired"] = paired_difference(a, b)
        summary["methods"][method] = entry
    return summary


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def verdict(d: dict[str, float], method: str, ref: str) -> str:
    if not distinguishable(d["ci_low"], d["ci_high"]):
        return "not distinguishable at this size"
    return f"{method} above {ref}" if d["difference"] > 0 else f"{method} below {ref}"


def summary_markdown(cfg: Config, summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    seeds = cfg.compare.seeds
    ref = summary["reference"]
    n_test = max((r["num_eval"] for r in rows), default=0)
    lines = [f"# Comparison: {cfg.task.name}, {n_test} test problems, seeds {', '.join(map(str, seeds))}", "",
             "## Accuracy of each method's last stage", "",
             "Pooled: all seeds' answers together, with a 95% Wilson interval. Cost: tokens generated "
             "(training data, RL rollouts) plus tokens trained on, mean over seeds; evaluation excluded. "
             "Generated / budget: the most any seed generated, against run.budget_tokens. Seconds: mean over "
             "seeds of the method's wall seconds plus those of work another run had computed alike and "
             "handed over (compare.reuse): what its computation cost.", "",
             "| method | stage | " + " | ".join(f"seed {s}" for s in seeds)
             + " | mean ± sd | pooled [95% CI] | cost tokens | generated / budget | seconds |",
             "| --- | --- | " + "---: | " * len(seeds) + "---: | ---: | ---: | ---: | ---: |"]
    for method, e in summary["methods"].items():
        per_seed = " | ".join(_fmt(e["by_seed"].get(s)) for s in seeds)
        spread = f"{e['mean']:.3f} ± {_fmt(e['sd'])}"
        budget = f"{cfg.run.budget_tokens:,}" if cfg.run.budget_tokens else "no limit"
        lines.append(f"| {method} | {e['stage']} | {per_seed} | {spread} | {e['pooled']:.3f} "
                     f"[{e['ci_low']:.3f}, {e['ci_high']:.3f}] | {e['cost_tokens']:,.0f} | "
                     f"{e['generated_tokens']:,} / {budget} | {e['seconds']:,.0f} |")
    lines += [""] + budget_lines(cfg, rows) + diagnostic_lines(rows) + stage_gain_lines(cfg, rows) + tuning_lines(cfg)
    lines += time_lines(rows)
    lines += [f"## Paired differences against {ref}", "",
              f"Each method's last stage minus {ref}'s, problem by problem on the same test problems "
              f"(paired), pooled over seeds: 95% interval (Newcombe) and exact McNemar p-value. "
              f"Where the interval covers 0 the two are not distinguishable at this size.", "",
              "| method | difference | 95% CI | pairs | only method right | only reference right | McNemar p | verdict |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for method, e in summary["methods"].items():
        d = e.get("paired")
        if d is None:
            continue
        lines.append(f"| {method} | {d['difference']:+.3f} | [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] | {d['n']} | "
                     f"{d['only_a']} | {d['only_b']} | {d['p_value']:.3g} | {verdict(d, method, ref)} |")
    return "\n".join(lines) + "\n"


def write_tables(cfg: Config, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    out = Path(cfg.compare.output_dir)
    columns = COLUMNS + sorted({k for r in rows for k in r} - set(COLUMNS))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out / "comparison.csv", buf.getvalue())
    lines = [summary_markdown(cfg, summary, rows), "## Every stage", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in columns) + " |")
    write_atomic(out / "comparison.md", "\n".join(lines) + "\n")


def curve(rows: list[dict[str, Any]], method: str, x: str) -> list[dict[str, float]]:
    """One point per stage of ``method``: x and accuracy averaged over seeds, and the 95% Wilson
    interval of all seeds' answers at that stage together."""
    points = []
    for it in sorted({r["iteration"] for r in rows if r["method"] == method}):
        at = [r for r in rows if r["method"] == method and r["iteration"] == it]
        correct = sum(round(r["accuracy"] * r["num_eval"]) for r in at)
        n = sum(r["num_eval"] for r in at)
        lo, hi = wilson(correct, n)
        points.append({"x": statistics.fmean(r[x] for r in at), "accuracy": statistics.fmean(r["accuracy"] for r in at),
                       "ci_low": lo, "ci_high": hi})
    return points


def plot_comparison(rows: list[dict[str, Any]], x: str = "iteration"):
    """Accuracy per method against ``x`` (a key of AXES), mean over seeds, with 95% error bars."""
    from .report import _figure

    fig, ax = _figure()
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = curve(rows, method, x)
        ys = [p["accuracy"] for p in pts]
        err = [[max(0.0, y - p["ci_low"]) for y, p in zip(ys, pts)], [max(0.0, p["ci_high"] - y) for y, p in zip(ys, pts)]]
        ax.errorbar([p["x"] for p in pts], ys, yerr=err, marker="o", capsize=3, label=method)
    ax.set_xlabel(AXES.get(x, (x,))[0])
    ax.set_ylabel("held-out accuracy (95% interval)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    seeds = sorted({r["seed"] for r in rows})
    ax.set_title(f"Methods compared ({len(seeds)} seed{'s' if len(seeds) > 1 else ''})")
    fig.tight_layout()
    return fig


def choose_point(runs: list[Path]) -> tuple[int, list[float | None]]:
    """compare.tune's choice among one method's grid-point run directories: the point whose last stage
    with a validation accuracy scores highest on validation (the first such point on a tie). Test
    accuracy is never read. Returns the chosen index and each point's validation accuracy."""
    scores: list[float | None] = []
    for run in runs:
        rows = [r for r in read_jsonl(run / "metrics.jsonl") if r.get("validation_accuracy") is not None]
        scores.append(max(rows, key=lambda r: r["iteration"])["validation_accuracy"] if rows else None)
    known = [i for i, v in enumerate(scores) if v is not None]
    if not known:
        raise ConfigError(f"compare.tune: no grid point of {runs[0].parent.name}/{runs[0].name.split('@')[0]} has a "
                          "validation accuracy to choose on; set task.num_validation > 0")
    return max(known, key=lambda i: (scores[i], -i)), scores


def tune_method(cfg: Config, scfg: Config, seed: int, method: str, points: list[dict[str, Any]]) -> None:
    """Run every grid point of ``method`` (each its own run directory ``<method>@<i>``, at the same budget),
    choose one on validation, link ``<method>`` to it and record the grid in ``tuning.jsonl``."""
    from .methods import run_method

    base = scfg.to_dict()
    runs = []
    for i, point in enumerate(points):
        data = copy.deepcopy(base)
        for dotted, value in point.items():
            section, key = dotted.split(".", 1)
            data[section][key] = value
        pcfg = from_dict(data)
        name = f"{method}@{i}"
        log(f"compare: seed {seed}, {method}, grid point {i + 1}/{len(points)}: {point}")
        share_iteration0(cfg, seed, name)
        run_method(pcfg, method, run_name=name)
        runs.append(seed_dir(cfg, seed) / name)
    chosen, scores = choose_point(runs)
    link = seed_dir(cfg, seed) / method
    if distributed.is_main():
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.exists():
            raise ConfigError(f"compare.tune: {link} is a run directory of an untuned run; move it away to tune "
                              f"{method}")
        link.symlink_to(runs[chosen].name, target_is_directory=True)
        path = Path(cfg.compare.output_dir) / "tuning.jsonl"
        with open(path.with_name(".tuning.lock"), "w") as lock:  # pool workers finishing tuned jobs at once
            fcntl.flock(lock, fcntl.LOCK_EX)
            others = [r for r in read_jsonl(path) if (r["seed"], r["method"]) != (seed, method)]
            write_jsonl(path, others + [{"seed": seed, "method": method, "point": i, "values": point,
                                         "validation_accuracy": scores[i], "chosen": i == chosen}
                                        for i, point in enumerate(points)])


def tuning_lines(cfg: Config) -> list[str]:
    """The grid of compare.tune: each point's values and validation accuracy, the chosen one marked."""
    rows = read_jsonl(Path(cfg.compare.output_dir) / "tuning.jsonl")
    if not rows:
        return []
    lines = ["## Tuning (compare.tune)", "",
             f"Each method's grid points ran at the same budget; the one with the best validation accuracy "
             f"({cfg.task.num_validation} validation problems) is the method's result above. Test accuracy is "
             "reported for the chosen point only.", "",
             "| method | seed | point | values | validation accuracy | chosen |", "| --- | ---: | ---: | --- | ---: | --- |"]
    for r in rows:
        values = ", ".join(f"{k}={v}" for k, v in r["values"].items()) or "(the config's values)"
        lines.append(f"| {r['method']} | {r['seed']} | {r['point']} | {values} | {_fmt(r['validation_accuracy'])} | "
                     f"{'**chosen**' if r['chosen'] else ''} |")
    return lines + [""]


def share_iteration0(cfg: Config, seed: int, method: str) -> None:
    """Give a method that has not started the few-shot evaluation another run already made.

    Iteration 0 is the same for every method (same base model, prompt, problems and grader,
    greedy decoding), so it is computed once per comparison: once per seed when the split
    follows the seed, else once for all seeds.
    """
    target = seed_dir(cfg, seed) / method
    if (target / "metrics.jsonl").exists() or not distributed.is_main():  # rank 0 writes the run directories
        return
    # any seed's directory will do when the split is fixed, also one this process does not list
    # (seeds run side by side, one process each)
    others = [seed_dir(cfg, seed)] + ([] if cfg.compare.resample_split else
                                      sorted(Path(cfg.compare.output_dir).glob("seed_*")))
    for directory in others:
        for other in cfg.compare.methods:
            source_dir = directory / other
            if source_dir == target:
                continue
            rows = [r for r in read_jsonl(source_dir / "metrics.jsonl") if r["iteration"] == 0]
            source = source_dir / "iter_000" / "eval.jsonl"
            if rows and source.exists():
                (target / "iter_000").mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target / "iter_000" / "eval.jsonl")
                append_jsonl(target / "metrics.jsonl", [dict(rows[0], shared_from=f"{directory.name}/{other}")])
                return


# what stage 1 of grpo (rl.grpo_init: sft) and iteration 1 of star-no-rationalization both read
SFT_START_SECTIONS = ("model", "task", "sampling", "train", "eval")


def share_sft_start(cfg: Config, seed: int, method: str) -> None:
    """Give grpo the SFT start that star-no-rationalization's first iteration already trained in this seed.

    GRPO's stage 1 is one STaR iteration without rationalization: greedy few-shot rationales for the
    training problems, the right ones kept, a fresh adapter trained from the base for STaR's first-iteration
    steps with the same seed, evaluated on bare questions. Where both methods' configs agree on everything
    that computation reads (``SFT_START_SECTIONS``, the run seed and budget, one sample per problem, no
    few-shot prompts after training), star-no-rationalization's iteration 1 is that stage: its directory
    and row are copied (``shared_from``), as the few-shot evaluation is (``share_iteration0``), and the
    row's seconds count for grpo's cost but not twice in the time by phase."""
    import dataclasses

    from .methods import method_config
    from .training import num_steps

    source_name = "star-no-rationalization"
    if method != "grpo" or source_name not in cfg.compare.methods or not distributed.is_main():
        return
    mine = method_config(seed_config(cfg, seed), method)
    target, source = seed_dir(cfg, seed) / method, seed_dir(cfg, seed) / source_name
    rows = read_jsonl(target / "metrics.jsonl")
    if mine.rl.grpo_init != "sft" or not rows or any(r["iteration"] >= 1 for r in rows) \
            or not (source / "config.yaml").exists() or (source / "config_changes.jsonl").exists():
        return  # no SFT start, iteration 0 not recorded yet, the stage already ran, or no unchanged source
    # the config the source ran with (a tuned point's, where compare.tune chose one), not the one it would get now
    theirs = from_dict(with_legacy_values(yaml.safe_load((source / "config.yaml").read_text()) or {}))
    same = (all(dataclasses.asdict(getattr(mine, k)) == dataclasses.asdict(getattr(theirs, k))
                for k in SFT_START_SECTIONS)
            and (mine.run.seed, mine.run.budget_tokens, mine.run.budget_seconds, mine.run.budget_axis)
            == (theirs.run.seed, theirs.run.budget_tokens, theirs.run.budget_seconds, theirs.run.budget_axis)
            and theirs.star.samples_per_problem == 1 and not theirs.star.rationalization
            and not theirs.star.adaptive_sampling and not theirs.sampling.few_shot_after_training)
    first = [r for r in read_jsonl(source / "metrics.jsonl") if r["iteration"] == 1 and r.get("stage") == "star"]
    if not same or not first or first[0].get("budget_exhausted") or first[0].get("shared_from") \
            or first[0].get("steps") != num_steps(1, mine.train.start_steps, mine.train.step_growth) \
            or not (source / "iter_001" / "adapter").is_dir():
        return
    shutil.rmtree(target / "iter_001", ignore_errors=True)  # an unfinished attempt of its own
    shutil.copytree(source / "iter_001", target / "iter_001")
    row = {k: v for k, v in first[0].items()  # as grpo's stage writes it: no rationalization, no sampling accuracy
           if k not in ("num_correct_samples", "train_accuracy", "seconds_rationalization")}
    append_jsonl(target / "metrics.jsonl", [dict(row, stage="sft", shared_from=f"{seed_dir(cfg, seed).name}/{source_name}")])
    log(f"compare: seed {seed}, grpo's SFT start is {source_name}'s iteration 1 (the same computation), copied")


def adopt_saved_comparison(cfg: Config, out: Path) -> list[str]:
    """Where a method's run in ``out`` was saved before a key of ``LEGACY_VALUES`` existed, every method of the
    comparison (a new one too) runs with what that code did, so all compute alike (``rundir.adopt_legacy_values``);
    returns the keys set."""
    adopted: list[str] = []
    for saved in sorted(out.glob("seed_*/*/config.yaml")):
        if read_jsonl(saved.parent / "metrics.jsonl"):
            adopted += adopt_legacy_values(yaml.safe_load(saved.read_text()) or {}, cfg)
    if adopted:
        log(f"compare: {out} holds runs saved before {', '.join(adopted)} existed; every method runs with "
            + ", ".join(f"{k}={LEGACY_VALUES[k]}" for k in adopted) + " (what that code did), so all compute alike")
    return adopted


def run_job(cfg: Config, seed: int, method: str) -> None:
    """One method of one seed: its grid points (compare.tune), or its run with what other runs share."""
    from .methods import run_method

    scfg = seed_config(cfg, seed)
    points = tune_points(cfg, method)
    with reuse.active(Path(cfg.compare.output_dir) / ".reuse" if reuse.enabled(cfg) else None):
        if points != [{}]:  # a grid, even of one point: its values are applied and recorded
            tune_method(cfg, scfg, seed, method, points)
            return
        log(f"compare: seed {seed}, {method}")
        share_iteration0(cfg, seed, method)
        share_sft_start(cfg, seed, method)
        run_method(scfg, method)


def reuse_sources(cfg: Config, method: str) -> list[str]:
    """The methods whose work ``method`` computes alike in this config, so that under compare.reuse it waits
    for them in a pool (its own calls then find their results in the store): v-star's generator and dpo's
    first iteration sample as rest-em does when they draw as many rationales per problem at the same
    temperature; star's first rationales are star-no-rationalization's (greedy, one per problem). Only an
    order: what is reused is decided by reuse.py's keys, call by call."""
    from .methods import method_config

    def draws(name: str) -> tuple[int, float]:
        c = method_config(cfg, name)
        return (c.dpo.samples_per_problem, c.dpo.temperature) if name == "dpo" else \
            (c.star.samples_per_problem, c.sampling.temperature)

    sources = {"v-star": "rest-em", "dpo": "rest-em", "star": "star-no-rationalization"}
    source = sources.get(method)
    if (not reuse.enabled(cfg) or source not in cfg.compare.methods or tune_points(cfg, source) != [{}]
            or tune_points(cfg, method) != [{}]):
        return []
    return [source] if draws(method) == draws(source) else []


def job_needs(cfg: Config, jobs: list[tuple[int, str]]) -> dict[tuple[int, str], list[tuple[int, str]]]:
    """What each job waits for in a pool: the job that evaluates the few-shot base, the shortest method's
    (every other job copies its iteration 0: one per comparison, or one per seed with compare.resample_split),
    and for grpo, star-no-rationalization of its seed (grpo's SFT start, ``share_sft_start``). What a job
    only starts after is ``job_after``."""
    from .methods import method_config

    untuned = [m for m in cfg.compare.methods if tune_points(cfg, m) == [{}]]
    sft_start = ("grpo" in untuned and "star-no-rationalization" in cfg.compare.methods
                 and method_config(cfg, "grpo").rl.grpo_init == "sft")
    # the source of iteration 0 waits for nothing: never grpo while grpo waits for its SFT start
    # (nor a method that waits for the run whose work it reuses)
    candidates = [m for m in untuned if not (sft_start and m == "grpo") and not reuse_sources(cfg, m)]
    # every other job waits for the whole source job: the shortest one (few-shot, where it is listed)
    first = min(candidates, key=lambda m: workers_lib.job_cost((0, m))) if candidates else None
    needs: dict[tuple[int, str], list[tuple[int, str]]] = {}
    for seed, method in jobs:
        source = (seed if cfg.compare.resample_split else cfg.compare.seeds[0], first)
        mine = [source] if first is not None and (seed, method) != source else []
        if method == "grpo" and sft_start:
            mine.append((seed, "star-no-rationalization"))
        needs[(seed, method)] = mine
    return needs


def job_after(cfg: Config, jobs: list[tuple[int, str]]) -> dict[tuple[int, str], list[tuple[int, str]]]:
    """What each job starts after in a pool, finished or failed: under compare.reuse the runs whose work it
    computes alike (``reuse_sources``), so that their results are in the store when it asks. An order, not an
    input: where a source failed the job computes that work itself."""
    return {(seed, method): [(seed, other) for other in reuse_sources(cfg, method)] for seed, method in jobs}


def _worker_start() -> None:  # each worker process: no progress bars (two would garble one terminal)
    import os

    os.environ["STAR_LITE_PROGRESS"] = "0"


def _pool_job(data: dict[str, Any], seed: int, method: str) -> None:
    from . import loop

    loop.LOG_TAG = f"seed {seed} {method}"
    run_job(from_dict(data), seed, method)


def run_pool(cfg: Config, jobs: list[tuple[int, str]], workers: int, why: str) -> None:
    """The jobs on ``workers`` processes side by side, longest first (``workers.run_jobs``); each resumes what
    an earlier run of it left, as in one process. Each process picks its torch threads (run.threads: auto
    shares the cores among the star_lite processes running), so two workers on two cores take one each."""
    import multiprocessing

    from .progress import progress

    data = cfg.to_dict()
    log(f"compare: {len(jobs)} jobs (seed, method) on {workers} worker processes ({why}), "
        "longest first; each worker's lines carry its seed and method")
    bar = progress(len(jobs), "compare", unit="job")
    try:
        with cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                    initializer=_worker_start) as pool:
            def start(job):
                return pool.submit(_pool_job, data, *job)

            def report(line: str) -> None:
                if " done in " in line:
                    bar.update(1)
                log(f"compare: {line}")

            try:
                workers_lib.run_jobs(jobs, job_needs(cfg, jobs), workers_lib.job_cost, workers, start, log=report,
                                     name=lambda job: f"seed {job[0]}, {job[1]}", after=job_after(cfg, jobs))
            except KeyboardInterrupt:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    finally:
        bar.close()


def compare(cfg: Config) -> list[dict[str, Any]]:
    """Run every method in ``cfg.compare.methods`` once per seed in ``cfg.compare.seeds`` (continuing
    finished ones) and write the comparison; returns its rows."""
    import matplotlib.pyplot as plt

    if cfg.compare.reference not in cfg.compare.methods:
        raise ConfigError(f"compare.reference: {cfg.compare.reference!r} is not in compare.methods "
                          f"({', '.join(cfg.compare.methods)}); add it, or set compare.reference to one of them")
    if {"self-motivated", "grpo"} & set(cfg.compare.methods):
        from .trainers.grpo import check_trl_options

        check_trl_options(cfg)  # now, not after the methods before them have run
    out = Path(cfg.compare.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    adopt_saved_comparison(cfg, out)
    jobs = [(seed, method) for seed in cfg.compare.seeds for method in cfg.compare.methods]
    workers, why = workers_lib.choose_workers(cfg.compare.workers, len(jobs), cfg.model.device)
    if workers == 1:
        for seed, method in jobs:
            run_job(cfg, seed, method)
    else:
        run_pool(cfg, jobs, workers, why)
    rows = comparison_rows(cfg)
    summary = summarize(cfg, rows)
    write_tables(cfg, rows, summary)
    for x, (_, name) in AXES.items():
        if not distributed.is_main():
            break
        fig = plot_comparison(rows, x)
        fig.savefig(out / name)
        plt.close(fig)
    log(f"compare: wrote {out / 'comparison.md'}")
    return rows
