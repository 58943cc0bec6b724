"""Plots and report.md for a run directory: what a person looks at instead of reading logs.

    star-lite report runs/quickstart        ->  runs/quickstart/report.md + *.png

In a notebook each plot is one call: ``plot_accuracy(run_dir)`` shows the plot once and returns
its matplotlib Figure (``fig.savefig(...)``), whether the call ends the cell, ends with ``;`` or
is assigned.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from .rundir import read_jsonl, write_atomic


def _metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    rows = read_jsonl(Path(run_dir) / "metrics.jsonl")
    if not rows:
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl rows yet; is this a run directory?")
    return sorted(rows, key=lambda r: r["iteration"])


@functools.cache
def _figure_class():
    from matplotlib.figure import Figure

    class ShownOnce(Figure):
        """A Figure that Jupyter draws once per cell, not twice when it is also the cell's value.

        pyplot shows every open figure at the end of a cell; a returned Figure is drawn again as
        the cell's value. Both go through this method: the first draws, the second does nothing.
        Shown again in a later cell, it draws again.
        """

        def _ipython_display_(self):
            from IPython import get_ipython
            from IPython.display import display

            shell = get_ipython()
            cell = getattr(shell, "execution_count", None)
            if cell is not None and getattr(self, "_star_lite_shown_in", None) == cell:
                return
            self._star_lite_shown_in = cell
            display(_as_png(self))

    return ShownOnce


def _as_png(fig):
    import io

    from IPython.display import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return Image(data=buffer.getvalue(), format="png")


def _figure():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline", "nbagg"):
        matplotlib.use("Agg")  # files, no screen needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110, FigureClass=_figure_class())
    ax.grid(alpha=0.3)
    return fig, ax


def plot_accuracy(run_dir: str | Path):
    """Held-out accuracy per iteration (iteration 0 = few-shot base model), with 95% Wilson error bars."""
    from .stats import row_interval

    rows = _metrics(run_dir)
    fig, ax = _figure()
    its = [r["iteration"] for r in rows]
    accs = [r["accuracy"] for r in rows]
    bounds = [row_interval(r) for r in rows]
    err = [[max(0.0, a - lo) for a, (lo, _) in zip(accs, bounds)], [max(0.0, hi - a) for a, (_, hi) in zip(accs, bounds)]]
    n = max((r.get("num_eval", 0) for r in rows), default=0)
    ax.errorbar(its, accs, yerr=err, marker="o", capsize=3, label=f"test accuracy ({n} problems, 95% interval)")
    if any(r.get("validation_accuracy") is not None for r in rows):
        ax.plot(its, [r.get("validation_accuracy") for r in rows], marker="s", linestyle="--",
                label="validation accuracy (what stopping looks at)")
    ax.legend(fontsize=8)
    ax.set_xlabel("iteration (0 = few-shot base model)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_xticks(its)
    ax.set_title("STaR: held-out accuracy")
    fig.tight_layout()
    return fig


def plot_training_set(run_dir: str | Path):
    """Training examples per iteration, split into found unaided and rationalized; above them,
    hatched, the rationalizations rejected for giving the hint away (not trained on)."""
    rows = [r for r in _metrics(run_dir) if r["iteration"] > 0]
    fig, ax = _figure()
    its = [r["iteration"] for r in rows]
    rationalized = [r["num_rationalized"] for r in rows]
    unaided = [r["num_train_examples"] - r["num_rationalized"] for r in rows]
    leaked = [r.get("num_rejected_hint", 0) for r in rows]
    ax.bar(its, unaided, label="answered right unaided")
    ax.bar(its, rationalized, bottom=unaided, label="rationalized (hint)")
    ax.bar(its, leaked, bottom=[r["num_train_examples"] for r in rows], fill=False, hatch="//",
           label="rejected: leaked the hint (not trained on)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("training examples")
    ax.set_xticks(its)
    ax.legend()
    ax.set_title("Training set per iteration")
    fig.tight_layout()
    return fig


def plot_accuracy_by_difficulty(run_dir: str | Path):
    """Held-out accuracy per difficulty group (e.g. digit count), per iteration; None if no groups."""
    rows = _metrics(run_dir)
    groups = sorted({g for r in rows for g in r.get("accuracy_by_difficulty", {})})
    if not groups:
        return None
    fig, ax = _figure()
    its = [r["iteration"] for r in rows]
    for g in groups:
        ax.plot(its, [r.get("accuracy_by_difficulty", {}).get(g) for r in rows], marker="o", label=g)
    ax.set_xlabel("iteration")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_xticks(its)
    ax.legend()
    ax.set_title("Accuracy by difficulty")
    fig.tight_layout()
    return fig


def rl_steps(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every RL step the run recorded (``iter_*/rl_steps.jsonl``), in order, each with its ``iteration``."""
    rows = []
    for path in sorted(Path(run_dir).glob("iter_*/rl_steps.jsonl")):
        it = int(path.parent.name.split("_")[1])
        rows += [dict(r, iteration=it) for r in read_jsonl(path)]
    return rows


def drawn_zero_variance_share(step: dict[str, Any]) -> float | None:
    """The share of flat groups among all a step drew, dropped ones included (every dropped group is flat).

    >>> drawn_zero_variance_share({"groups_drawn": 4, "groups_dropped": 2, "zero_variance_share": 0.5})
    0.75
    """
    drawn, dropped = step.get("groups_drawn"), step.get("groups_dropped") or 0
    if not drawn:
        return step.get("zero_variance_share")
    return (dropped + step["zero_variance_share"] * (drawn - dropped)) / drawn


def plot_rl_steps(run_dir: str | Path):
    """Mean reward and the share of zero-variance groups (no gradient) against RL step: did RL learn?
    None for a run without RL steps."""
    steps = rl_steps(run_dir)
    if not steps:
        return None
    fig, ax = _figure()
    x = [r["step"] for r in steps]
    ax.plot(x, [r["reward"] for r in steps], marker=".", label="mean reward")
    ax.plot(x, [r["zero_variance_share"] for r in steps], marker=".", label="zero-variance groups trained on (share)")
    if any(r.get("groups_dropped") for r in steps):  # dynamic sampling: what was drawn before the drop
        ax.plot(x, [drawn_zero_variance_share(r) for r in steps], marker=".", linestyle="--",
                label="zero-variance groups drawn (share)")
    ax.set_xlabel("RL step")
    ax.set_ylabel("reward / share")
    ax.set_title("RL: reward and groups that carry no gradient")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def example_rationales(run_dir: str | Path, iteration: int | None = None, n: int = 3) -> dict[str, list[dict]]:
    """A few kept, rationalized, hint-leaking and wrong samples of one iteration (default: the last)."""
    rows = [r for r in _metrics(run_dir) if r["iteration"] > 0]
    if not rows:
        return {"kept": [], "rationalized": [], "leaked the hint": [], "rejected": []}
    it = iteration if iteration is not None else rows[-1]["iteration"]
    samples = read_jsonl(Path(run_dir) / f"iter_{it:03d}" / "samples.jsonl")
    return {
        "kept": [s for s in samples if s["phase"] == "rationale" and s["correct"]][:n],
        "rationalized": [s for s in samples if s["phase"] == "rationalization" and s["correct"]
                         and not s.get("rejected")][:n],
        "leaked the hint": [s for s in samples if s.get("rejected") == "hint"][:n],
        "rejected": [s for s in samples if not s["correct"]][:n],
    }


_EXAMPLE_TITLES = {"kept": "Example kept rationales", "rationalized": "Example rationalized rationales",
                   "leaked the hint": "Example rationalizations rejected for leaking the hint (not trained on)",
                   "rejected": "Example rejected rationales"}


def write_report(run_dir: str | Path) -> Path:
    """Write report.md and its PNG plots into ``run_dir``; return the report's path."""
    import matplotlib.pyplot as plt

    root = Path(run_dir)
    rows = _metrics(root)
    images = []
    for name, make in (("accuracy.png", plot_accuracy), ("training_set.png", plot_training_set),
                       ("accuracy_by_difficulty.png", plot_accuracy_by_difficulty), ("rl_steps.png", plot_rl_steps)):
        fig = make(root)
        if fig is None:
            continue
        fig.savefig(root / name)
        plt.close(fig)
        images.append(name)
    from .stats import row_interval

    has_validation = any(r.get("validation_accuracy") is not None for r in rows)
    lines = [f"# STaR run: {root.name}", "",
             "| iteration | accuracy | 95% interval | test problems | " + ("validation | " if has_validation else "")
             + "training examples | rationalized | rejected: leaked hint | seconds |",
             "| ---: | ---: | ---: | ---: | " + ("---: | " if has_validation else "") + "---: | ---: | ---: | ---: |"]
    for r in rows:
        n = r.get("num_eval", 0)
        lo, hi = row_interval(r)
        val = r.get("validation_accuracy")
        lines.append(f"| {r['iteration']} | {r['accuracy']:.3f} | {lo:.3f}–{hi:.3f} | {n} | "
                     + (f"{'' if val is None else f'{val:.3f}'} | " if has_validation else "")
                     + f"{r['num_train_examples']} | {r['num_rationalized']} | {r.get('num_rejected_hint', 0)} | "
                     f"{r['seconds']:.0f} |")
    lines.append("")
    if has_validation:
        best = max((r for r in rows if r.get("validation_accuracy") is not None), key=lambda r: r["validation_accuracy"])
        lines += [f"Best iteration by validation accuracy: {best['iteration']} (test accuracy there: "
                  f"{best['accuracy']:.3f}; test accuracy is reported, never used to choose).", ""]
    cut = [r["iteration"] for r in rows if r.get("budget_exhausted")]
    if cut:
        lines += [f"The budget (run.budget_tokens / run.budget_seconds) stopped sampling within iteration "
                  f"{cut[-1]}; it trained on what it had kept.", ""]
    lines += [f"![{name}]({name})" for name in images]
    examples = example_rationales(root)
    for kind, items in examples.items():
        if items:
            lines += ["", f"## {_EXAMPLE_TITLES[kind]}", ""]
            for s in items:
                lines.append(f"- **{s['question']}** (gold {s['gold']}) → {s['completion']}")
    path = root / "report.md"
    write_atomic(path, "\n".join(lines) + "\n")
    return path
