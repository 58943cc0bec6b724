"""``star-lite paired A B``: the paired difference of two per-problem result files.

Each side is one of
- star_lite's ``eval.jsonl`` (rows with ``id`` and ``correct``),
- a run directory (its last stage's ``iter_NNN/eval.jsonl``),
- lm-evaluation-harness's ``--log_samples`` output (``samples_*.jsonl``: rows with ``doc_id``,
  ``doc`` and one value per metric), keyed by the doc's ``id`` when it has one, else ``doc_id``.
The problems are matched by id; both sides must hold the same problems.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .rundir import RunDir, read_jsonl
from .stats import paired_difference


def _last_eval_file(run_dir: Path) -> Path:
    rundir = RunDir(run_dir)
    row = rundir.last_stage()
    if row is None:
        raise FileNotFoundError(f"{run_dir} is a directory without metrics.jsonl: give a run directory or a "
                                "per-problem results file (eval.jsonl, lm-eval samples_*.jsonl)")
    last = row["iteration"]
    path = rundir.iter_dir(last) / "eval.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: its last stage (iteration {last}) has no {path.name}")
    return path


def _lm_eval_correct(row: dict[str, Any], metric: str | None, where: str) -> bool:
    names = [metric] if metric else list(row.get("metrics") or []) or [
        k for k in ("exact_match", "acc") if k in row]
    for name in names:
        if name in row:
            try:
                return float(row[name]) > 0.5
            except (TypeError, ValueError):
                raise ValueError(f"{where}: metric {name} is {row[name]!r}, not a number") from None
    raise ValueError(f"{where}: no metric {metric or 'exact_match/acc'} in this lm-eval sample "
                     f"(fields: {', '.join(sorted(row))}); name one with --metric")


def _from_candidates(rows: list[dict[str, Any]], metric: str | None, where: Path) -> dict[str, bool]:
    """v-star's k candidates per problem: majority@k (default, as the v-star row counts it: the most
    common answer, ties to the first) or the verifier's best-of-k (``metric="best_of"``)."""
    from .evaluation import majority_correct

    by_id: dict[str, list[dict[str, Any]]] = {}
    for i, row in enumerate(rows, start=1):
        missing = [k for k in ("id", "answer", "correct", "verifier_score") if k not in row]
        if missing:
            raise ValueError(f"{where} row {i}: a v-star candidate without {', '.join(missing)}")
        by_id.setdefault(str(row["id"]), []).append(row)
    if metric not in (None, "majority", "best_of"):
        raise ValueError(f"{where}: a candidates file is read as --metric majority (default) or best_of, "
                         f"not {metric}")
    results = {}
    for pid, cands in by_id.items():
        if metric == "best_of":
            results[pid] = bool(max(cands, key=lambda c: c["verifier_score"])["correct"])
        else:
            results[pid] = majority_correct([c["answer"] for c in cands], [bool(c["correct"]) for c in cands])
    return results


def read_results(path: str | Path, metric: str | None = None) -> dict[str, bool]:
    """Problem id -> correct, from any of the formats in the module docstring (and v-star's
    ``candidates.jsonl``: majority@k, or with ``metric="best_of"`` the verifier's pick)."""
    path = Path(path)
    if path.is_dir():
        path = _last_eval_file(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    rows = read_jsonl(path)
    if rows and "sample" in rows[0] and "verifier_score" in rows[0]:
        return _from_candidates(rows, metric, path)
    results: dict[str, bool] = {}
    for i, row in enumerate(rows, start=1):
        where = f"{path} row {i}"
        if "doc_id" in row:  # lm-eval
            doc = row.get("doc") or {}
            key = str(doc["id"]) if isinstance(doc, dict) and "id" in doc else str(row["doc_id"])
            correct = _lm_eval_correct(row, metric, where)
        elif "id" in row and "correct" in row:
            key, correct = str(row["id"]), bool(row["correct"])
        else:
            raise ValueError(f"{where}: neither a star_lite result (id, correct) nor an lm-eval sample "
                             f"(doc_id); fields: {', '.join(sorted(row))}")
        if key in results:
            raise ValueError(f"{where}: problem {key!r} appears twice (lm-eval writes one row per filter: "
                             "export the task with one filter, or give one filter's rows)")
        results[key] = correct
    if not results:
        raise ValueError(f"{path}: no results")
    return results


def _matched(a: str | Path, b: str | Path, metric: str | None) -> list[tuple[bool, bool]]:
    ra, rb = read_results(a, metric), read_results(b, metric)
    only_a, only_b = sorted(ra.keys() - rb.keys()), sorted(rb.keys() - ra.keys())
    if only_a or only_b:
        def few(ids: list[str]) -> str:
            return ", ".join(ids[:3]) + (" …" if len(ids) > 3 else "")
        raise ValueError(f"the two files hold different problems: {len(only_a)} only in {a} ({few(only_a)}), "
                         f"{len(only_b)} only in {b} ({few(only_b)}); a paired difference needs the same ones")
    return [(ra[i], rb[i]) for i in sorted(ra)]


def compare_files(a: str | Path, b: str | Path, *more: str | Path, metric: str | None = None) -> dict[str, Any]:
    """Accuracy of each side and the paired difference a - b over the same problems. ``more`` adds
    further (a, b) pairs, e.g. the same two methods on other seeds, pooled into one difference."""
    paths = [a, b, *more]
    if len(paths) % 2:
        raise ValueError(f"paired takes pairs of results (A B, or A1 B1 A2 B2 ...); got {len(paths)} paths")
    pairs = [x for i in range(0, len(paths), 2) for x in _matched(paths[i], paths[i + 1], metric)]
    d = paired_difference([x for x, _ in pairs], [y for _, y in pairs])
    return {**d, "accuracy_a": sum(x for x, _ in pairs) / len(pairs), "accuracy_b": sum(y for _, y in pairs) / len(pairs),
            "num_pairs_of_files": len(paths) // 2}
