"""Comparison mode: every listed method on one task, split, grader and budget; a table and plots.

    star-lite compare configs/compare_quickstart.yaml
    -> runs/compare/<method>/            one run directory per method (resumable per method)
       comparison.csv, comparison.md     per method and iteration: accuracy, training examples,
                                         generated tokens, wall seconds, peak memory (+ pass@k, maj@k)
       accuracy_by_iteration.png, accuracy_by_tokens.png
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
from typing import Any

from .config import Config
from .loop import log
from .rundir import append_jsonl, read_jsonl, write_atomic

COLUMNS = ["method", "iteration", "stage", "accuracy", "num_train_examples", "generated_tokens",
           "cumulative_generated_tokens", "seconds", "cumulative_seconds", "peak_memory_mb"]


def comparison_rows(out_dir: str | Path, methods: list[str]) -> list[dict[str, Any]]:
    """One row per method and iteration, with costs summed up to that iteration."""
    rows = []
    for method in methods:
        tokens = seconds = 0.0
        for r in sorted(read_jsonl(Path(out_dir) / method / "metrics.jsonl"), key=lambda r: r["iteration"]):
            tokens += r.get("generated_tokens", 0)
            seconds += r.get("seconds", 0.0)
            row = {"method": method, "iteration": r["iteration"], "stage": r.get("stage", ""),
                   "accuracy": round(r["accuracy"], 4), "num_train_examples": r.get("num_train_examples", 0),
                   "generated_tokens": r.get("generated_tokens", 0), "cumulative_generated_tokens": int(tokens),
                   "seconds": r.get("seconds", 0.0), "cumulative_seconds": round(seconds, 1),
                   "peak_memory_mb": r.get("peak_memory_mb")}
            row.update({k: round(v, 4) for k, v in r.items() if k.startswith(("pass@", "maj@"))})
            if r.get("reward_model_pair_accuracy") is not None:
                row["reward_model_pair_accuracy"] = round(r["reward_model_pair_accuracy"], 4)
            rows.append(row)
    return rows


def write_tables(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    columns = COLUMNS + sorted({k for r in rows for k in r} - set(COLUMNS))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out_dir / "comparison.csv", buf.getvalue())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in columns) + " |")
    write_atomic(out_dir / "comparison.md", "\n".join(lines) + "\n")


def plot_comparison(rows: list[dict[str, Any]], x: str = "iteration"):
    """Accuracy per method against ``x`` (iteration or cumulative_generated_tokens); a Figure."""
    from .report import _figure

    fig, ax = _figure()
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        ax.plot([r[x] for r in mine], [r["accuracy"] for r in mine], marker="o", label=method)
    ax.set_xlabel({"iteration": "iteration (0 = few-shot base model)",
                   "cumulative_generated_tokens": "generated tokens (training data and RL rollouts)"}.get(x, x))
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Methods compared")
    fig.tight_layout()
    return fig


def share_iteration0(out: Path, method: str, methods: list[str]) -> None:
    """Give a method that has not started the few-shot evaluation another method already made.

    Iteration 0 is the same for every method (same base model, prompt, problems and grader),
    so it is computed once per comparison.
    """
    target = out / method
    if (target / "metrics.jsonl").exists():
        return
    for other in methods:
        rows = [r for r in read_jsonl(out / other / "metrics.jsonl") if r["iteration"] == 0]
        source = out / other / "iter_000" / "eval.jsonl"
        if other != method and rows and source.exists():
            (target / "iter_000").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target / "iter_000" / "eval.jsonl")
            append_jsonl(target / "metrics.jsonl", [dict(rows[0], shared_from=other)])
            return


def compare(cfg: Config) -> list[dict[str, Any]]:
    """Run every method in ``cfg.compare.methods`` (continuing finished ones) and write the comparison."""
    import matplotlib.pyplot as plt

    from .methods import run_method

    if {"self-motivated", "grpo"} & set(cfg.compare.methods):
        from .rl import check_trl_options

        check_trl_options(cfg)  # now, not after the methods before them have run
    out = Path(cfg.compare.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for method in cfg.compare.methods:
        log(f"compare: {method}")
        share_iteration0(out, method, cfg.compare.methods)
        run_method(cfg, method)
    rows = comparison_rows(out, cfg.compare.methods)
    write_tables(out, rows)
    for x, name in (("iteration", "accuracy_by_iteration.png"), ("cumulative_generated_tokens", "accuracy_by_tokens.png")):
        fig = plot_comparison(rows, x)
        fig.savefig(out / name)
        plt.close(fig)
    log(f"compare: wrote {out / 'comparison.md'}")
    return rows
