"""A fair fight: every method spends the budget or says why not, RL runs until the budget, dynamic
sampling drops flat groups, tuning chooses on validation, false positives are counted."""

import json

import pytest

from star_lite.compare import budget_lines, choose_point, diagnostic_lines
from star_lite.config import ConfigError, from_dict
from star_lite.models import fresh_adapter, load_base_model, load_tokenizer
from star_lite.rundir import read_jsonl
from star_lite.tasks import Problem, load_task

from conftest import tiny_config_dict

RL = {"num_generations": 2, "batch_size": 4, "learning_rate": 1e-3, "grpo_init": "base"}


# --- one budget, spent by every method ----------------------------------------------------------

def _final(method, spent, reason, seed=0):
    return {"method": method, "seed": seed, "iteration": 1, "spent_tokens": spent, "stop_reason": reason}


def test_a_method_that_stops_early_without_a_reason_is_flagged():
    cfg = from_dict({"run": {"budget_tokens": 1000}})
    text = "\n".join(budget_lines(cfg, [_final("grpo", 120, None), _final("star", 990, "budget"),
                                        _final("dpo", 400, "no_data")]))
    lines = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "under 90% with no recorded reason" in lines["grpo"] and "12%" in lines["grpo"]
    assert "under 90%" not in lines["star"]  # spent it
    assert "stopped for no_data" in lines["dpo"] and "no recorded reason" not in lines["dpo"]


def test_grpo_with_rl_steps_0_runs_until_the_budget_is_spent(tiny_model_dir, tmp_path):
    from star_lite.methods import run_method

    budget = 100  # a few steps of 4 completions of at most 8 tokens
    data = tiny_config_dict(tiny_model_dir, tmp_path / "unused", rl={**RL, "steps": 0}, run={"budget_tokens": budget})
    data["compare"] = {"methods": ["grpo"], "output_dir": str(tmp_path), "seeds": [0]}
    row = run_method(from_dict(data), "grpo")[-1]
    per_step = {}
    for r in read_jsonl(tmp_path / "grpo" / "iter_001" / "rollouts.jsonl"):
        per_step[r["step"]] = per_step.get(r["step"], 0) + r["tokens"]
    assert row["generated_tokens"] >= budget > row["generated_tokens"] - per_step[max(per_step)]  # the last step spent it
    assert row["rl_steps"] == len(per_step) > 1 and row["rl_stop_reason"] == "budget"
    assert json.loads((tmp_path / "grpo" / "stop.json").read_text())["stop_reason"] == "budget"


def test_grpo_whose_sft_start_spent_the_budget_records_it_and_runs_no_rl(tiny_model_dir, tmp_path):
    from star_lite.methods import run_method

    # the SFT start samples every training problem (16 x up to 8 tokens): more than 10 tokens
    data = tiny_config_dict(tiny_model_dir, tmp_path / "unused", rl={**RL, "steps": 0, "grpo_init": "sft"},
                            run={"budget_tokens": 10})
    data["task"]["name"] = "toy_tasks:AlwaysRight"  # every sample right: an SFT start by construction
    data["compare"] = {"methods": ["grpo"], "output_dir": str(tmp_path), "seeds": [0]}
    rows = run_method(from_dict(data), "grpo")
    assert [r["stage"] for r in rows] == ["few-shot", "sft"] and rows[-1]["generated_tokens"] >= 10
    stop = json.loads((tmp_path / "grpo" / "stop.json").read_text())
    assert stop["stop_reason"] == "budget" and "before RL" in stop["detail"]
    assert not (tmp_path / "grpo" / "iter_002").exists()


def test_rl_steps_0_without_a_budget_is_refused_naming_the_field():
    from star_lite.rl import rl_max_steps

    with pytest.raises(ConfigError, match=r"rl\.steps"):
        rl_max_steps(from_dict({"rl": {"steps": 0}}))


def test_budget_axis_all_counts_trained_tokens_too():
    from star_lite.budget import budget_spent

    rows = [{"generated_tokens": 100, "trained_tokens": 900}]
    assert budget_spent(rows, from_dict({"run": {"budget_tokens": 500}})) is None
    assert budget_spent(rows, from_dict({"run": {"budget_tokens": 500, "budget_axis": "all"}})) is not None


# --- dynamic sampling ------------------------------------------------------------------------------

def test_dynamic_sampling_drops_a_zero_variance_group_and_trains_on_informative_ones(tiny_model_dir, tmp_path,
                                                                                     monkeypatch):
    import trl

    from star_lite.rl import train_rl

    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path, rl={**RL, "steps": 2, "dynamic_sampling": True}))
    tok = load_tokenizer(cfg.model.name_or_path)
    task = load_task("arithmetic", min_digits=1, max_digits=1, rationale="plain")
    problems = task.load("train", 6, 0)
    flat = {p.id for p in problems[:3]}  # 3 of 6: two steps of 2 prompts cannot miss them all

    def reward(prompts, completions, id, **_):
        # every completion of a flat problem scores 1; any other group gets 1 and 0: reward variance
        out = [1.0 if pid in flat else float(i % 2) for i, pid in enumerate(id)]
        reward.last = out
        return out

    reward.__name__, reward.last = "reward", []
    trained_on = []
    original = trl.GRPOTrainer._compute_loss

    def record(self, model, inputs):
        trained_on.append(inputs["advantages"].detach().clone())
        return original(self, model, inputs)

    monkeypatch.setattr(trl.GRPOTrainer, "_compute_loss", record)
    # redraws come from the informative problems (dataset rows 3-5), so the step fills up
    monkeypatch.setattr("random.Random.sample", lambda self, pop, k: [i for i in pop if i >= 3][:k])
    policy = fresh_adapter(load_base_model(cfg.model), cfg.model)
    train_rl(policy, tok, task, problems, reward, cfg, tmp_path)
    steps = read_jsonl(tmp_path / "rl_steps.jsonl")
    assert sum(s["groups_dropped"] for s in steps) >= 1
    assert all(s["zero_variance_share"] == 0.0 for s in steps if s["groups_dropped"])
    # every completion trained on carries a gradient: a flat group's advantages are all 0 (TRL shuffles the
    # rows of a batch before the loss, so the groups are not checked one by one)
    assert len(trained_on) == 2 and all((adv.abs() > 1e-3).all() for adv in trained_on)


def test_zero_variance_groups_are_the_groups_whose_rewards_are_all_equal():
    from star_lite.rl import zero_variance_groups

    assert zero_variance_groups([0.5, 0.5, 0.5, 0.7, 0.0, 0.0], 3) == [True, False]
    assert zero_variance_groups([1.0, 1.0, 1.0, 1.0], 2) == [True, True]


# --- reward mixing ------------------------------------------------------------------------------------

def test_reward_model_scores_are_standardised_and_weighted(monkeypatch):
    import star_lite.rl as rl
    from star_lite.trainers import grpo

    task = load_task("arithmetic", min_digits=1, max_digits=1)
    p = Problem("a", "What is 3 + 4?", "7")
    monkeypatch.setattr(grpo, "reward_scores", lambda *a, **k: [3.0, 1.0])  # what make_reward scores with
    reward = rl.make_reward(task, {"a": p}, reward_model=object(), tokenizer=None, reward_model_weight=2.0,
                            reward_model_scale=(1.0, 2.0), correctness_weight=0.5)
    got = reward(["Q"] * 2, [" The answer is 7.", " The answer is 8."], id=["a", "a"])
    assert got == pytest.approx([0.5 + 2.0 * (3 - 1) / 2, 0.0 + 2.0 * (1 - 1) / 2])
    off = rl.make_reward(task, {"a": p}, reward_model=object(), tokenizer=None, reward_model_weight=0.0,
                         reward_model_scale=(1.0, 2.0))
    assert off(["Q"] * 2, [" The answer is 7.", " The answer is 8."], id=["a", "a"]) == [1.0, 0.0]


# --- tuning on validation -------------------------------------------------------------------------------

def _point(tmp_path, name, validation, test):
    run = tmp_path / name
    run.mkdir()
    rows = [{"iteration": 0, "accuracy": 0.1, "validation_accuracy": 0.1},
            {"iteration": 1, "accuracy": test, "validation_accuracy": validation}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_tuning_chooses_the_best_validation_point_whatever_test_says(tmp_path):
    runs = [_point(tmp_path, "grpo@0", validation=0.30, test=0.90),  # best on test: must not be chosen
            _point(tmp_path, "grpo@1", validation=0.55, test=0.20),
            _point(tmp_path, "grpo@2", validation=0.40, test=0.50)]
    chosen, scores = choose_point(runs)
    assert chosen == 1 and scores == [0.30, 0.55, 0.40]
    assert choose_point(runs[:1] + [_point(tmp_path, "grpo@3", 0.30, 0.0)])[0] == 0  # a tie: the first point


def test_tuning_needs_validation_and_the_same_number_of_points_per_method():
    tune = {"grpo": {"rl.learning_rate": [1e-5, 1e-4]}, "star": {"train.learning_rate": [1e-4, 2e-4]}}
    ok = {"task": {"num_validation": 20}, "compare": {"methods": ["few-shot", "star", "grpo"], "reference": "star",
                                                      "tune": tune}}
    from_dict(ok)
    with pytest.raises(ConfigError, match="num_validation"):
        from_dict({**ok, "task": {"num_validation": 0}})
    with pytest.raises(ConfigError, match="same number of grid points"):
        from_dict({**ok, "compare": {**ok["compare"], "tune": {"grpo": tune["grpo"]}}})
    with pytest.raises(ConfigError, match=r"compare\.tune\.grpo\.rl\.lr"):
        from_dict({**ok, "compare": {**ok["compare"], "tune": {**tune, "grpo": {"rl.lr": [1, 2]}}}})


@pytest.mark.parametrize("rates", [[1e-2, 1e-3], [1e-3]])  # a grid of one point is applied too, not ignored
def test_a_tuned_comparison_runs_every_point_and_reports_the_chosen_one(tiny_model_dir, tmp_path, rates):
    import yaml

    from star_lite.compare import compare

    data = tiny_config_dict(tiny_model_dir, tmp_path / "unused", star={"iterations": 1},
                            task={"num_validation": 4})
    data["compare"] = {"methods": ["few-shot", "sft-direct"], "reference": "few-shot", "output_dir": str(tmp_path),
                       "seeds": [0], "tune": {"sft-direct": {"train.learning_rate": rates}}}
    compare(from_dict(data))
    grid = read_jsonl(tmp_path / "tuning.jsonl")
    assert [g["point"] for g in grid] == list(range(len(rates))) and sum(g["chosen"] for g in grid) == 1
    for g in grid:  # each point ran with its own value
        saved = yaml.safe_load((tmp_path / "seed_0" / f"sft-direct@{g['point']}" / "config.yaml").read_text())
        assert saved["train"]["learning_rate"] == rates[g["point"]]
    chosen = next(g for g in grid if g["chosen"])
    assert (tmp_path / "seed_0" / "sft-direct").resolve() == (tmp_path / "seed_0" / f"sft-direct@{chosen['point']}").resolve()
    assert chosen["validation_accuracy"] == max(g["validation_accuracy"] for g in grid)
    assert "## Tuning (compare.tune)" in (tmp_path / "comparison.md").read_text()


# --- false positives ------------------------------------------------------------------------------

def test_false_positives_are_counted_and_rejected_on_request():
    loose = load_task("chain_addition")
    strict = load_task("chain_addition", verify_steps=True)
    p = Problem("x", "What is 12 + 7 + 5?", "24", meta={"terms": [12, 7, 5]})
    wrong_step = "12 + 7 = 18. 18 + 5 = 24. The answer is 24."
    assert loose.is_correct(wrong_step, p) and loose.is_false_positive(wrong_step, p)
    assert not strict.is_correct(wrong_step, p)
    assert strict.is_correct("12 + 7 = 19. 19 + 5 = 24. The answer is 24.", p)

    from star_lite.loop import false_positive_summary

    kept = [{"id": "x", "completion": " " + wrong_step}, {"id": "x", "completion": " 12 + 7 = 19. 19 + 5 = 24."}]
    assert false_positive_summary(loose, [p], kept) == {"num_false_positive": 1, "false_positive_share": 0.5}


def test_pairwise_accuracy_not_better_than_chance_is_said_so():
    rows = [{"method": "v-star", "seed": 0, "verifier_pair_accuracy": 0.52, "verifier_pairs": 50,
             "verifier_pair_ci_low": 0.39, "verifier_pair_ci_high": 0.65},
            {"method": "self-motivated", "seed": 0, "reward_model_pair_accuracy": 0.9, "reward_model_heldout_pairs": 50,
             "reward_model_pair_ci_low": 0.79, "reward_model_pair_ci_high": 0.96}]
    text = "\n".join(diagnostic_lines(rows))
    v, r = (next(line for line in text.splitlines() if line.startswith(f"| {m} ")) for m in ("v-star", "self-motivated"))
    assert "not distinguishable from chance" in v and "chance" not in r
