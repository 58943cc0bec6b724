"""Comparison mode on a tiny random model: every method end to end, reward model, RL, tables."""

import csv

import pytest
import torch

from star_lite.compare import comparison_rows, plot_comparison
from star_lite.config import METHODS, ConfigError, from_dict
from star_lite.evaluation import majority_answer, pass_at_k, score_k
from star_lite.methods import method_config, unread_sections
from star_lite.rundir import RunDir
from star_lite.models import load_tokenizer
from star_lite.rl import (load_reward_base, make_reward, pairwise_accuracy, preference_pairs, reward_scores,
                          split_pairs, train_reward_model)
from star_lite.rundir import read_jsonl
from star_lite.stats import wilson
from star_lite.tasks import ArithmeticTask, Problem

from conftest import tiny_config_dict


def _compare_config(model_dir, out, **extra):
    data = tiny_config_dict(model_dir, out / "unused", **extra)
    # dpo, v-star and adastar run end to end in tests/test_beyond_star.py
    methods = [m for m in METHODS if m not in ("dpo", "v-star", "adastar")]
    data["compare"] = {"methods": methods, "output_dir": str(out), "seeds": [0]}
    data["rest_em"] = {"samples_per_problem": 3, "max_kept_per_problem": 2}
    data["rl"] = {"wrong_answers_per_problem": 2, "reward_steps": 3, "reward_batch_size": 4, "steps": 2,
                  "num_generations": 2, "batch_size": 4, "learning_rate": 1e-3, "correctness_weight": 0.5}
    data["star"] = {"iterations": 2}
    return data


@pytest.fixture(scope="module")
def finished_compare(tiny_model_dir, tmp_path_factory):
    from star_lite.cli import main
    import yaml

    out = tmp_path_factory.mktemp("compare")
    cfg_path = out / "compare.yaml"
    cfg_path.write_text(yaml.safe_dump(_compare_config(tiny_model_dir, out)))
    assert main(["compare", str(cfg_path)]) == 0
    return out, from_dict(yaml.safe_load(cfg_path.read_text()))


def test_every_method_runs_and_the_comparison_has_a_row_per_method_and_iteration(finished_compare):
    out, cfg = finished_compare
    with open(out / "comparison.csv") as f:
        table = list(csv.DictReader(f))
    expected = {"few-shot": [0], "sft-direct": [0, 1], "star": [0, 1, 2], "star-no-rationalization": [0, 1, 2],
                "rest-em": [0, 1, 2], "self-motivated": [0, 1, 2], "grpo": [0, 1, 2]}
    for method, its in expected.items():
        metrics = read_jsonl(out / "seed_0" / method / "metrics.jsonl")
        assert [r["iteration"] for r in metrics] == its, method
        assert [int(r["iteration"]) for r in table if r["method"] == method] == its
        assert [float(r["accuracy"]) for r in table if r["method"] == method] == \
            [round(r["accuracy"], 4) for r in metrics]
    every_stage = (out / "comparison.md").read_text().split("## Every stage")[1]
    assert every_stage.count("\n| ") == len(table) + 1  # header and one line per row
    for name in ("accuracy_by_iteration.png", "accuracy_by_tokens.png", "accuracy_by_cost.png",
                 "accuracy_by_seconds.png"):
        assert (out / name).stat().st_size > 1000
    # every trained method was evaluated on the same held-out problems, at its last stage too
    ids = {m: [r["id"] for r in read_jsonl(out / "seed_0" / m / f"iter_{its[-1]:03d}" / "eval.jsonl")]
           for m, its in expected.items() if its[-1] > 0}
    assert len({tuple(v) for v in ids.values()}) == 1 and len(next(iter(ids.values()))) == cfg.task.num_test


def test_rest_em_samples_many_and_caps_kept_per_problem(finished_compare):
    out, cfg = finished_compare
    samples = read_jsonl(out / "seed_0" / "rest-em" / "iter_001" / "samples.jsonl")
    assert {s["phase"] for s in samples} == {"rationale"}  # no rationalization
    assert len(samples) == 3 * cfg.task.num_train
    kept = read_jsonl(out / "seed_0" / "rest-em" / "iter_001" / "train.jsonl")
    per_problem = {}
    for k in kept:
        per_problem[k["id"]] = per_problem.get(k["id"], 0) + 1
    assert max(per_problem.values()) <= 2
    saved = read_jsonl(out / "seed_0" / "star-no-rationalization" / "iter_001" / "samples.jsonl")
    assert {s["phase"] for s in saved} == {"rationale"}


def test_self_motivated_logs_reward_model_and_rl(finished_compare):
    out, cfg = finished_compare
    rows = read_jsonl(out / "seed_0" / "self-motivated" / "metrics.jsonl")
    assert [r["stage"] for r in rows] == ["few-shot", "sft", "rl"]
    rl = rows[2]
    assert rl["reward_model_pairs"] > 0 and rl["rl_reward_last"] is not None and rl["generated_tokens"] > 0
    # the reward model's held-out accuracy with its count and interval; what training cost
    n, acc = rl["reward_model_heldout_pairs"], rl["reward_model_pair_accuracy"]
    assert n > 0 and (rl["reward_model_pair_ci_low"], rl["reward_model_pair_ci_high"]) == wilson(round(acc * n), n)
    assert rl["trained_tokens"] > rl["generated_tokens"] and rl["reward_model_trained_tokens"] > 0
    assert rl["rl_kl_last"] is not None  # the KL penalty is on by default
    # rationales for the gold answer and two wrong ones, per question
    samples = read_jsonl(out / "seed_0" / "self-motivated" / "iter_001" / "samples.jsonl")
    assert len(samples) == 3 * cfg.task.num_train and all("hint_answer" in s for s in samples)
    assert rows[1]["generated_tokens"] == sum(s["tokens"] for s in samples)
    for method, it in (("self-motivated", 2), ("grpo", 2)):
        rollouts = read_jsonl(out / "seed_0" / method / f"iter_{it:03d}" / "rollouts.jsonl")
        row = read_jsonl(out / "seed_0" / method / "metrics.jsonl")[it]
        assert sum(r["tokens"] for r in rollouts) == row["generated_tokens"]
        assert max(r["tokens"] for r in rollouts) <= cfg.sampling.max_new_tokens  # rl.max_completion_length: 0
        assert {r["step"] for r in rollouts} == set(range(row["rl_steps"]))
        # one diagnostics row per step, none hidden by train.logging_steps; the report plots them
        steps = read_jsonl(out / "seed_0" / method / f"iter_{it:03d}" / "rl_steps.jsonl")
        assert [r["step"] for r in steps] == list(range(1, row["rl_steps"] + 1))
        for key in ("reward", "zero_variance_share", "kl", "completion_length", "update_norm"):
            assert all(r[key] is not None for r in steps), key
        assert steps[-1]["update_norm"] > 0 and row["rl_update_norm"] == steps[-1]["update_norm"]
        assert row["rl_stop_reason"] == "steps"  # rl.steps = 2 capped it before run.budget_tokens (none)
    sft_adapter = out / "seed_0" / "self-motivated" / "iter_001" / "adapter" / "adapter_model.safetensors"
    rl_adapter = out / "seed_0" / "self-motivated" / "iter_002" / "adapter" / "adapter_model.safetensors"
    from safetensors.torch import load_file

    a, b = load_file(sft_adapter), load_file(rl_adapter)
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a), "RL did not change the adapter"
    grpo = read_jsonl(out / "seed_0" / "grpo" / "metrics.jsonl")
    assert [r["stage"] for r in grpo] == ["few-shot", "sft", "rl"]  # rl.grpo_init: sft, the default
    for method in ("self-motivated", "grpo"):  # RL starts from the SFT adapter: the saved change is RL's update
        a, b = (load_file(out / "seed_0" / method / f"iter_{it:03d}" / "adapter" / "adapter_model.safetensors")
                for it in (1, 2))
        moved = sum(float((b[k].float() - a[k].float()).pow(2).sum()) for k in a) ** 0.5
        row = read_jsonl(out / "seed_0" / method / "metrics.jsonl")[-1]
        assert moved == pytest.approx(row["rl_update_norm"], rel=1e-3), method
    assert grpo[-1]["rl_reward_first"] is not None and grpo[-1]["rl_init"] == "sft"
    from star_lite.report import write_report
    assert "rl_steps.png" in write_report(out / "seed_0" / "grpo").read_text()


def test_grpo_takes_its_sft_start_from_star_without_rationalization_where_they_compute_the_same(
        finished_compare, tiny_model_dir, tmp_path):
    """GRPO's stage 1 is star-no-rationalization's iteration 1, so a comparison runs it once (share_sft_start);
    GRPO run alone computes the same data, adapter and evaluation, and a source run with another setting is
    not shared."""
    import shutil

    import yaml
    from safetensors.torch import load_file

    from star_lite.cli import main
    from star_lite.compare import share_sft_start

    out, cfg = finished_compare
    source, grpo = out / "seed_0" / "star-no-rationalization", out / "seed_0" / "grpo"
    row = read_jsonl(grpo / "metrics.jsonl")[1]
    assert row["shared_from"] == "seed_0/star-no-rationalization" and row["stage"] == "sft"
    assert row["accuracy"] == read_jsonl(source / "metrics.jsonl")[1]["accuracy"]

    alone = tmp_path / "alone"
    data = _compare_config(tiny_model_dir, alone)
    data["compare"].update(methods=["few-shot", "grpo"], reference="few-shot")
    (tmp_path / "alone.yaml").write_text(yaml.safe_dump(data))
    assert main(["compare", str(tmp_path / "alone.yaml")]) == 0
    computed = alone / "seed_0" / "grpo"
    assert "shared_from" not in read_jsonl(computed / "metrics.jsonl")[1]
    for name in ("train.jsonl", "eval.jsonl"):
        assert read_jsonl(computed / "iter_001" / name) == read_jsonl(source / "iter_001" / name), name
    a, b = (load_file(d / "iter_001" / "adapter" / "adapter_model.safetensors") for d in (computed, source))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    for changed, shared in ((None, True), (("train", "learning_rate", 0.5), False),
                            (("sampling", "few_shot_after_training", True), False)):
        copy = tmp_path / f"copy_{shared}_{changed and changed[1]}"
        shutil.copytree(source, copy / "seed_0" / "star-no-rationalization")
        (copy / "seed_0" / "grpo").mkdir(parents=True)
        shutil.copy(grpo / "metrics.jsonl", copy / "seed_0" / "grpo" / "metrics.jsonl")
        (copy / "seed_0" / "grpo" / "metrics.jsonl").write_text(
            (grpo / "metrics.jsonl").read_text().splitlines()[0] + "\n")  # iteration 0 only
        if changed:
            saved = copy / "seed_0" / "star-no-rationalization" / "config.yaml"
            values = yaml.safe_load(saved.read_text())
            values[changed[0]][changed[1]] = changed[2]
            saved.write_text(yaml.safe_dump(values))
        mine = from_dict(dict(data, compare={**data["compare"], "output_dir": str(copy),
                                             "methods": ["star-no-rationalization", "grpo"],
                                             "reference": "grpo"}))
        share_sft_start(mine, 0, "grpo")
        rows = read_jsonl(copy / "seed_0" / "grpo" / "metrics.jsonl")
        assert [r["iteration"] for r in rows] == ([0, 1] if shared else [0]), changed
        assert (copy / "seed_0" / "grpo" / "iter_001" / "adapter").is_dir() == shared


def test_plot_values_match_the_table(finished_compare):
    out, cfg = finished_compare
    rows = comparison_rows(cfg)
    fig = plot_comparison(rows, "cumulative_generated_tokens")
    line = fig.axes[0].containers[list(cfg.compare.methods).index("star")].lines[0]
    star = [r for r in rows if r["method"] == "star"]  # one seed: the mean is the seed's value
    assert list(line.get_xdata()) == [r["cumulative_generated_tokens"] for r in star]
    assert list(line.get_ydata()) == [r["accuracy"] for r in star]


def test_reward_model_ranks_right_above_wrong_after_training(tiny_model_dir, tmp_path):
    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path), [
        "rl.reward_steps=30", "rl.reward_learning_rate=0.01", "rl.reward_batch_size=8"])
    tok = load_tokenizer(cfg.model.name_or_path)
    # the pairs differ only in whether the sum is right
    pairs = [{"prompt": f"Q: What is {i} + {j}?\nA:", "chosen": f" {i} + {j} = {i + j}. The answer is {i + j}.",
              "rejected": f" {i} + {j} = {i + j + 1}. The answer is {i + j + 1}."} for i in range(4) for j in range(2)]
    before = pairwise_accuracy(load_reward_base(cfg, tok), tok, pairs)
    model, trained = train_reward_model(cfg, tok, pairs, tmp_path)
    after = pairwise_accuracy(model, tok, pairs)
    assert after == 1.0, (before, after, trained.history[-3:])
    assert trained.trained_tokens > 0
    assert (tmp_path / "reward_model" / "adapter_config.json").is_file()


def test_rl_reward_is_the_reward_model_score_without_the_grader(tiny_model_dir, tmp_path):
    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path), ["rl.correctness_weight=0"])
    tok = load_tokenizer(cfg.model.name_or_path)
    task = ArithmeticTask(1, 1)
    problems = task.load("train", 3, 0)
    completions = [" 1 + 2 = 3. The answer is 3.\n\nQ: What", " The answer is 4.", " no idea"]
    rm = load_reward_base(cfg, tok).eval()
    reward = make_reward(task, {p.id: p for p in problems}, reward_model=rm, tokenizer=tok,
                         reward_model_weight=cfg.rl.reward_model_weight, correctness_weight=cfg.rl.correctness_weight)
    got = reward([task.prompt(p) for p in problems], completions, id=[p.id for p in problems])
    want = reward_scores(rm, tok, [task.format_question(p) for p in problems],
                         [task.format_completion(task.clean_completion(c)) for c in completions])
    assert got == pytest.approx(want)


def test_preference_pairs_and_split_by_question():
    task = ArithmeticTask(1, 1)
    problems = task.load("train", 6, 0)
    samples = []
    for n, p in enumerate(problems):
        samples += [{"id": p.id, "completion": f"r{n}", "correct": True},
                    {"id": p.id, "completion": f"w{n}", "correct": False}]
    samples.append({"id": problems[0].id, "completion": "r0", "correct": True})  # duplicate: one pair only
    pairs = preference_pairs(task, problems, samples)
    assert len(pairs) == 6 and all(p["chosen"].strip().startswith("r") for p in pairs)
    train, held = split_pairs(pairs, 0.34, seed=0)
    assert len(held) == 2 and not {p["id"] for p in train} & {p["id"] for p in held}


def test_pass_at_k_and_majority_vote_by_hand():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert majority_answer(["7", "8", "8", None]) == "8"
    task = ArithmeticTask(1, 1)
    problems = [Problem("a", "q", "3"), Problem("b", "q", "5")]
    samples = [["The answer is 3.", "The answer is 4.", "The answer is 4."],   # 1 of 3 right, vote 4
               ["The answer is 5.", "The answer is 5.", "no idea"]]           # 2 of 3 right, vote 5
    got = score_k(task, problems, samples, k=3)
    assert got == {"pass@3": 1.0, "maj@3": 0.5}
    got2 = score_k(task, problems, samples, k=2)
    assert got2["pass@2"] == pytest.approx(((1 - 1 / 3) + 1.0) / 2)


def test_method_configs_and_bad_method_name(tiny_model_dir, tmp_path):
    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path), ["star.iterations=3"])
    assert method_config(cfg, "sft-direct").train.start_steps == 3 + 3 + 4  # int(3 * 1.2^k) summed
    rest = method_config(cfg, "rest-em")
    assert (rest.sampling.temperature, rest.star.samples_per_problem, rest.star.max_kept_per_problem,
            rest.star.rationalization) == (0.7, 8, 10, False)
    v_star = method_config(cfg, "v-star")
    assert (v_star.sampling.temperature, v_star.star.samples_per_problem, v_star.star.rationalization) == (0.7, 4, False)
    assert method_config(cfg, "adastar").star.adaptive_sampling and not method_config(cfg, "star").star.adaptive_sampling
    with pytest.raises(ConfigError, match="compare.methods: unknown method"):
        from_dict({}, ["compare.methods=[star, ppo]"])


def test_a_method_section_does_not_touch_the_runs_of_methods_that_do_not_read_it(tiny_model_dir, tmp_path):
    # a comparison that gains dpo (or retunes it) continues its finished star runs
    data = tiny_config_dict(tiny_model_dir, tmp_path)
    data["compare"] = dict(data.get("compare") or {}, output_dir=str(tmp_path / "cmp"))
    before = method_config(from_dict(data), "star")
    RunDir(before.run.output_dir).prepare(before)
    RunDir(before.run.output_dir).add_metrics({"iteration": 0, "accuracy": 0.5})
    tuned = ["dpo.steps=7", "v_star.k=3", "rl.steps=2", "rest_em.temperature=0.9", "adastar.sample_fraction=0.3"]
    after = method_config(from_dict(data, tuned), "star")
    assert RunDir(after.run.output_dir).prepare(after) == []
    assert method_config(from_dict(data, tuned), "dpo").dpo.steps == 7
    assert method_config(from_dict(data, tuned), "v-star").v_star.k == 3
    assert method_config(from_dict(data, tuned), "grpo").rl.steps == 2
    assert method_config(from_dict(data, tuned), "adastar").adastar.sample_fraction == 0.3
    # a setting the method does read still refuses
    with pytest.raises(ConfigError, match="different config: train.learning_rate"):
        RunDir(after.run.output_dir).prepare(method_config(from_dict(data, tuned + ["train.learning_rate=0.1"]), "star"))
    # a run saved with the comparison's values in those sections (as before method_config reset
    # them) continues too, as run_method checks it
    old = from_dict(data, tuned)
    old.run.output_dir = str(tmp_path / "old")
    RunDir(old.run.output_dir).prepare(old)
    RunDir(old.run.output_dir).add_metrics({"iteration": 0, "accuracy": 0.5})
    now = method_config(from_dict(data), "star")
    now.run.output_dir = old.run.output_dir
    with pytest.raises(ConfigError, match="different config: adastar.sample_fraction"):
        RunDir(old.run.output_dir).prepare(now)
    with pytest.raises(ConfigError, match="different config: dpo.steps"):  # dpo reads its section
        RunDir(old.run.output_dir).prepare(now, unread_sections(now, "dpo"))
    assert "dpo.steps" in RunDir(old.run.output_dir).prepare(now, unread_sections(now, "star"))
    with pytest.raises(ConfigError, match="multiple of rl.num_generations"):
        from_dict({}, ["rl.batch_size=6", "rl.num_generations=4"])


def test_each_stage_records_where_its_time_went(finished_compare):
    """Each method stage's row splits its seconds by phase (issue: the comparison's time by phase), and
    comparison.md sums them per method."""
    out, cfg = finished_compare
    expected = {("sft-direct", 1): {"training", "eval"},
                ("self-motivated", 1): {"sampling", "training", "eval"},
                ("self-motivated", 2): {"reward_model", "rl_rollouts", "rl_updates", "eval"},
                ("grpo", 1): {"sampling", "training", "eval"},
                ("grpo", 2): {"rl_rollouts", "rl_updates", "eval"}}
    for (method, it), phases in expected.items():
        row = next(r for r in read_jsonl(out / "seed_0" / method / "metrics.jsonl") if r["iteration"] == it)
        got = {k[len("seconds_"):]: v for k, v in row.items() if k.startswith("seconds_")}
        assert set(got) == phases, (method, it, got)
        assert sum(got.values()) <= row["seconds"] + 0.5, (method, it, got)
    text = (out / "comparison.md").read_text()
    table = text.split("## Time by phase")[1].split("\n\n")[2]
    assert "RL rollouts" in table.splitlines()[0] and "| grpo |" in table


def test_few_shot_records_its_stop_also_where_its_evaluation_is_copied(finished_compare, tmp_path):
    """A seed run on its own (one process per seed) copies few-shot's iteration 0 from another seed's run;
    its stop reason must still be recorded, or the budget table marks it as a method without its turn."""
    import json
    import shutil

    from star_lite.compare import run_job

    out, cfg = finished_compare
    assert json.loads((out / "seed_0" / "few-shot" / "stop.json").read_text())["stop_reason"] == "schedule"
    shutil.copytree(out / "seed_0" / "few-shot", tmp_path / "seed_0" / "few-shot")
    data = cfg.to_dict()
    data["compare"].update(seeds=[1], output_dir=str(tmp_path))
    run_job(from_dict(data), 1, "few-shot")
    copied = tmp_path / "seed_1" / "few-shot"
    assert read_jsonl(copied / "metrics.jsonl")[0]["shared_from"] == "seed_0/few-shot"
    assert json.loads((copied / "stop.json").read_text())["stop_reason"] == "schedule"
