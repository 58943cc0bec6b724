"""The comparison's numbers from run directories written by hand: spread over seeds, the verdict's
direction, the plotted intervals' n. No model runs; every expected value is worked out here."""

import math

import pytest

from star_lite.compare import comparison_rows, curve, summarize, summary_markdown
from star_lite.config import from_dict
from star_lite.rundir import append_jsonl

N = 50  # test problems per seed
SEEDS = [0, 1, 2]
# right answers per seed: star (the reference); grpo right wherever star is and on 10 more problems;
# dpo right on 10 fewer
RIGHT = {"star": [20, 25, 30], "grpo": [30, 35, 40], "dpo": [10, 15, 20]}


def _write(out, method, seed, right):
    run = out / f"seed_{seed}" / method
    (run / "iter_001").mkdir(parents=True)
    append_jsonl(run / "metrics.jsonl", [{"iteration": 1, "stage": "sft", "accuracy": right / N, "num_eval": N}])
    append_jsonl(run / "iter_001" / "eval.jsonl", [{"id": f"p{i}", "correct": i < right} for i in range(N)])


@pytest.fixture
def hand_written(tmp_path):
    for method, counts in RIGHT.items():
        for seed, right in zip(SEEDS, counts):
            _write(tmp_path, method, seed, right)
    cfg = from_dict({"compare": {"methods": list(RIGHT), "seeds": SEEDS, "reference": "star",
                                 "output_dir": str(tmp_path)}})
    rows = comparison_rows(cfg)
    return cfg, rows, summarize(cfg, rows)


def test_mean_and_sd_over_seeds_are_those_of_the_seed_accuracies(hand_written):
    _, _, summary = hand_written
    ref = summary["methods"]["star"]
    assert ref["by_seed"] == {0: 0.4, 1: 0.5, 2: 0.6}
    assert ref["mean"] == pytest.approx(0.5)
    assert ref["sd"] == pytest.approx(0.1)  # sample sd of 0.4, 0.5, 0.6
    assert (ref["pooled"], ref["n"]) == (pytest.approx(0.5), 150)


def test_the_verdict_says_which_side_the_difference_is_on(hand_written):
    cfg, rows, summary = hand_written
    good, bad = summary["methods"]["grpo"]["paired"], summary["methods"]["dpo"]["paired"]
    # 30 problems only grpo got right (10 per seed), none only star: +0.2 of 150 pairs
    assert (good["difference"], good["only_a"], good["only_b"], good["n"]) == (pytest.approx(0.2), 30, 0, 150)
    assert (bad["difference"], bad["only_a"], bad["only_b"]) == (pytest.approx(-0.2), 0, 30)
    table = {line.split(" | ")[0].strip("| "): line for line in summary_markdown(cfg, summary, rows).splitlines()
             if line.startswith("| ") and "McNemar" not in line and line.count("|") == 9}
    assert table["grpo"].endswith("| grpo above star |")
    assert table["dpo"].endswith("| dpo below star |")


def test_plotted_intervals_pool_every_seeds_answers(hand_written):
    _, rows, _ = hand_written
    (point,) = curve(rows, "star", "iteration")
    # 75 right of 150 answers: Wilson's interval worked out from its formula, z = 1.96
    z, n, p = 1.959963984540054, 150, 0.5
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert point["accuracy"] == pytest.approx(0.5)
    assert (point["ci_low"], point["ci_high"]) == (pytest.approx(centre - half), pytest.approx(centre + half))
    assert point["ci_high"] - point["ci_low"] == pytest.approx(0.158, abs=1e-3)  # one seed's n (50) gives 0.27


def test_what_the_last_stage_added_is_paired_against_the_model_it_started_from(tmp_path):
    from star_lite.compare import stage_gain_lines

    def stage(method, seed, it, name, right, file="eval.jsonl"):
        run = tmp_path / f"seed_{seed}" / method
        (run / f"iter_{it:03d}").mkdir(parents=True, exist_ok=True)
        if file == "eval.jsonl":
            append_jsonl(run / "metrics.jsonl", [{"iteration": it, "stage": name, "accuracy": right / N, "num_eval": N}])
        append_jsonl(run / f"iter_{it:03d}" / file, [{"id": f"p{i}", "correct": i < right} for i in range(N)])

    for seed in (0, 1):
        stage("grpo", seed, 1, "sft", 20)
        stage("grpo", seed, 2, "rl", 30)          # RL right on 10 more than its SFT start, per seed
        stage("dpo", seed, 1, "dpo", 15)
        stage("dpo", seed, 1, "dpo", 25, file="sft_eval.jsonl")  # DPO lost 10 of its SFT start's
        stage("star", seed, 1, "star", 25)       # no earlier model to compare with: no line
    cfg = from_dict({"compare": {"methods": ["star", "grpo", "dpo"], "seeds": [0, 1], "reference": "star",
                                 "output_dir": str(tmp_path)}})
    lines = stage_gain_lines(cfg, comparison_rows(cfg))
    table = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in lines if line.startswith("| ")
             and not line.startswith("| method") and not line.startswith("| ---")}
    assert set(table) == {("grpo", "0"), ("grpo", "1"), ("grpo", "pooled"), ("dpo", "0"), ("dpo", "1"), ("dpo", "pooled")}
    assert "| +0.200 |" in table[("grpo", "0")] and "| 50 |" in table[("grpo", "0")]
    assert "| +0.200 |" in table[("grpo", "pooled")] and "| 100 |" in table[("grpo", "pooled")]
    assert "| -0.200 |" in table[("dpo", "pooled")] and table[("dpo", "pooled")].rstrip().endswith("|  |")
