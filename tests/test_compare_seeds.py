"""A comparison over two seeds on a tiny model: rows per method x seed x stage, paired tests, resume."""

import csv

import pytest
import yaml

from star_lite.compare import comparison_rows, curve, plot_comparison, summarize
from star_lite.config import from_dict
from star_lite.rundir import read_jsonl

from conftest import tiny_config_dict

METHODS = ["few-shot", "sft-direct", "star"]


def _config(model_dir, out):
    data = tiny_config_dict(model_dir, out / "unused", star={"iterations": 1})
    data["compare"] = {"methods": METHODS, "output_dir": str(out), "seeds": [3, 5], "reference": "sft-direct"}
    return data


@pytest.fixture(scope="module")
def two_seeds(tiny_model_dir, tmp_path_factory):
    from star_lite.cli import main

    out = tmp_path_factory.mktemp("compare_seeds")
    path = out / "compare.yaml"
    path.write_text(yaml.safe_dump(_config(tiny_model_dir, out)))
    assert main(["compare", str(path)]) == 0
    return out, path, from_dict(yaml.safe_load(path.read_text()))


def test_one_csv_row_per_method_seed_and_stage(two_seeds):
    out, _, cfg = two_seeds
    with open(out / "comparison.csv") as f:
        table = list(csv.DictReader(f))
    for column in ("seed", "accuracy", "ci_low", "ci_high", "num_eval", "trained_tokens",
                   "cumulative_cost_tokens", "budget_tokens"):
        assert column in table[0], column
    keys = [(r["method"], int(r["seed"]), int(r["iteration"])) for r in table]
    assert sorted(keys) == sorted((m, s, i) for s in (3, 5) for m, its in
                                  (("few-shot", [0]), ("sft-direct", [0, 1]), ("star", [0, 1])) for i in its)
    for r in table:
        assert float(r["ci_low"]) <= float(r["accuracy"]) <= float(r["ci_high"])
        assert int(r["num_eval"]) == cfg.task.num_test
    trained = [r for r in table if r["method"] == "sft-direct" and r["iteration"] == "1"]
    assert all(int(r["trained_tokens"]) > 0 for r in trained)  # training counts as cost
    assert all(int(r["cumulative_cost_tokens"]) == int(r["cumulative_generated_tokens"]) + int(r["cumulative_trained_tokens"])
               for r in table)


def test_seeds_change_the_adapter_not_the_problems(two_seeds):
    out, _, _ = two_seeds
    from safetensors.torch import load_file

    a = load_file(out / "seed_3" / "sft-direct" / "iter_001" / "adapter" / "adapter_model.safetensors")
    b = load_file(out / "seed_5" / "sft-direct" / "iter_001" / "adapter" / "adapter_model.safetensors")
    assert any(not (a[k] == b[k]).all() for k in a), "the seed did not reach the adapter's initialisation"
    ids = {(s, m): [r["id"] for r in read_jsonl(out / f"seed_{s}" / m / "iter_001" / "eval.jsonl")]
           for s in (3, 5) for m in ("sft-direct", "star")}
    assert len({tuple(v) for v in ids.values()}) == 1  # trained methods saw the same test problems in every seed
    train = {s: [r["id"] for r in read_jsonl(out / f"seed_{s}" / "star" / "iter_001" / "samples.jsonl")] for s in (3, 5)}
    assert train[3] == train[5]


def test_summary_pairs_methods_problem_by_problem(two_seeds):
    out, _, cfg = two_seeds
    rows = comparison_rows(cfg)
    summary = summarize(cfg, rows)
    star = summary["methods"]["star"]
    assert set(star["by_seed"]) == {3, 5} and star["sd"] is not None
    d = star["paired"]
    assert d["n"] == 2 * cfg.task.num_test  # pooled over both seeds
    # recount the discordant pairs from the eval files
    only_star = only_ref = 0
    for s in (3, 5):
        x = {r["id"]: r["correct"] for r in read_jsonl(out / f"seed_{s}" / "star" / "iter_001" / "eval.jsonl")}
        y = {r["id"]: r["correct"] for r in read_jsonl(out / f"seed_{s}" / "sft-direct" / "iter_001" / "eval.jsonl")}
        only_star += sum(x[i] and not y[i] for i in x)
        only_ref += sum(y[i] and not x[i] for i in x)
    assert (d["only_a"], d["only_b"]) == (only_star, only_ref)
    assert "paired" not in summary["methods"]["sft-direct"]
    md = (out / "comparison.md").read_text()
    assert "## Paired differences against sft-direct" in md and "mean ± sd" in md and "generated / budget" in md
    assert "paired" in md and ("not distinguishable at this size" in md or "above sft-direct" in md
                               or "below sft-direct" in md)


def test_plots_draw_the_mean_and_the_interval(two_seeds):
    _, _, cfg = two_seeds
    rows = comparison_rows(cfg)
    fig = plot_comparison(rows, "cumulative_cost_tokens")
    star = curve(rows, "star", "cumulative_cost_tokens")
    line = fig.axes[0].containers[METHODS.index("star")]  # errorbar containers, in method order
    assert list(line.lines[0].get_ydata()) == [p["accuracy"] for p in star]
    assert list(line.lines[0].get_xdata()) == [p["x"] for p in star]
    assert line.has_yerr


def test_a_killed_comparison_redoes_nothing_finished(two_seeds, monkeypatch):
    import shutil

    import star_lite.loop as loop
    from star_lite.cli import main
    from star_lite.methods import common, dpo, sft_direct

    out, path, _ = two_seeds
    before = {p: p.read_text() for p in out.glob("seed_*/*/metrics.jsonl")}
    shutil.rmtree(out / "seed_5" / "star")  # as if killed before the last method of the last seed
    calls = []
    real = loop.train_adapter

    def counting(*args, **kwargs):
        calls.append(str(args[5].parent))  # the iteration directory's run directory
        return real(*args, **kwargs)

    for module in (loop, common, sft_direct, dpo):  # every module that trains a method's adapter
        monkeypatch.setattr(module, "train_adapter", counting)
    assert main(["compare", str(path)]) == 0
    assert calls == [str(out / "seed_5" / "star")]
    for p, text in before.items():
        if "seed_5/star" not in str(p):
            assert p.read_text() == text, p
    rows = read_jsonl(out / "seed_5" / "star" / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [0, 1] and rows[0]["shared_from"]  # iteration 0 not evaluated again


def test_a_seed_run_in_its_own_process_shares_the_few_shot_evaluation(two_seeds):
    from star_lite.cli import main

    out, path, _ = two_seeds
    # seeds may run side by side, one process each: a process listing only seed 7 still finds seed 3's
    assert main(["compare", str(path), "--set", "compare.seeds=[7]", "--set", "compare.methods=[few-shot]",
                 "--set", "compare.reference=few-shot"]) == 0
    row = read_jsonl(out / "seed_7" / "few-shot" / "metrics.jsonl")[0]
    assert row["shared_from"] == "seed_3/few-shot"
    assert read_jsonl(out / "seed_7" / "few-shot" / "iter_000" / "eval.jsonl") == \
        read_jsonl(out / "seed_3" / "few-shot" / "iter_000" / "eval.jsonl")
