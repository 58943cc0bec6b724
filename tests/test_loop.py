"""The STaR loop end to end on a tiny random model in 4-bit on the CPU, and its resume."""

import json

import pytest
import yaml
from peft import PeftModel

from star_lite.config import ConfigError, from_dict
from star_lite.loop import run
from star_lite.models import load_base_model
from star_lite.rundir import read_jsonl
from star_lite.tasks import load_task

from conftest import tiny_config_dict


def _scripted_rationale(task, problems):
    """What the loop's sampler writes, by construction (the tiny random model's own text depends on the
    CPU's kernels): a third of the problems answered right, a third wrong and then rationalized right, a
    third wrong even with the hint. Training and evaluation still run the real model."""
    order = {p.id: i for i, p in enumerate(problems)}

    def answer(prompt, desc):
        p = problem_of(prompt, task, problems)
        kind = order[p.id] % 3 if p is not None else 2
        if desc == "rationale":
            return f"The answer is {p.answer}." if kind == 0 else "The answer is 1000."
        return f"Adding them gives {p.answer}. The answer is {p.answer}." if kind == 1 else "The answer is 1000."
    return answer


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("star_run")
    cfg = from_dict(tiny_config_dict(tiny_model_dir, out, task={"name": "arithmetic"}))
    task = load_task(cfg.task.name, **cfg.task.options)
    problems = task.load("train", cfg.task.num_train, cfg.run.seed)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop_module, "generator", scripted_generator(_scripted_rationale(task, problems)))
        rows = run(cfg)
    return cfg, out, rows


def test_two_iterations_write_the_run_directory(finished_run):
    cfg, out, rows = finished_run
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert yaml.safe_load((out / "config.yaml").read_text()) == cfg.to_dict()
    for r in rows:
        for key in ("iteration", "accuracy", "num_train_examples", "num_rationalized", "seconds"):
            assert key in r, key
        assert 0.0 <= r["accuracy"] <= 1.0
    assert (out / "iter_000" / "eval.jsonl").is_file()

    for it in (1, 2):
        d = out / f"iter_{it:03d}"
        samples, kept, evals = read_jsonl(d / "samples.jsonl"), read_jsonl(d / "train.jsonl"), read_jsonl(d / "eval.jsonl")
        row = rows[it]
        first = [s for s in samples if s["phase"] == "rationale"]
        retried = [s for s in samples if s["phase"] == "rationalization"]
        # every training problem got a rationale; exactly the wrong ones were retried with the hint
        assert len(first) == cfg.task.num_train
        assert {s["id"] for s in retried} == {s["id"] for s in first if not s["correct"]}
        assert row["num_correct_samples"] == sum(s["correct"] for s in first)
        # kept = the correct samples of both phases, rationalized ones marked and free of the hint
        correct_ids = {(s["id"], s["phase"]) for s in samples if s["correct"]}
        assert len(kept) == row["num_train_examples"] > 0
        assert all((k["id"], "rationalization" if k["rationalized"] else "rationale") in correct_ids for k in kept)
        assert row["num_rationalized"] == sum(k["rationalized"] for k in kept) > 0
        # by construction (_scripted_rationale): a third right, a third rationalized
        assert row["num_correct_samples"] == len(range(0, cfg.task.num_train, 3))
        assert row["num_rationalized"] == len(range(1, cfg.task.num_train, 3))
        # a rationalized example trains on the bare question (no few-shot prefix, no hint), and what
        # the model wrote under the hint is saved without the hint's words
        task = load_task(cfg.task.name, **cfg.task.options)
        problems = {p.id: p for p in task.load("train", cfg.task.num_train, cfg.run.seed)}
        for k in kept:
            p = problems[k["id"]]
            assert k["prompt"] == task.format_question(p) != task.format_question(p, hint=True)
            assert task.format_hint(p)[len(p.question):].strip() not in k["completion"]
        assert len({(k["prompt"], k["completion"]) for k in kept}) == len(kept)
        assert len(evals) == cfg.task.num_test and row["accuracy"] == sum(e["correct"] for e in evals) / len(evals)
        assert row["steps"] == int(3 * 1.2 ** (it - 1))
        assert not (d / "samples.partial.jsonl").exists()
        assert (d / "adapter" / "adapter_config.json").is_file()


def test_saved_adapter_loads_with_peft(finished_run):
    cfg, out, _ = finished_run
    model = PeftModel.from_pretrained(load_base_model(cfg.model), str(out / "iter_002" / "adapter"))
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_resume_continues_without_redoing_finished_iterations(tiny_model_dir, tmp_path):
    data = tiny_config_dict(tiny_model_dir, tmp_path, star={"iterations": 1})
    rows1 = run(from_dict(data))
    assert [r["iteration"] for r in rows1] == [0, 1]
    adapter1 = (tmp_path / "iter_001" / "adapter" / "adapter_model.safetensors")
    stamp = adapter1.stat().st_mtime_ns
    metrics_before = (tmp_path / "metrics.jsonl").read_text()

    data["star"]["iterations"] = 2  # a safe change: accepted and recorded
    rows2 = run(from_dict(data))
    assert [r["iteration"] for r in rows2] == [0, 1, 2]
    assert (tmp_path / "metrics.jsonl").read_text().startswith(metrics_before)  # earlier rows untouched
    assert adapter1.stat().st_mtime_ns == stamp  # iteration 1 was not redone
    changes = read_jsonl(tmp_path / "config_changes.jsonl")
    assert changes[-1]["changes"] == {"star.iterations": {"saved": 1, "now": 2}}

    # a change that would mix results is refused, naming the key
    data["train"]["learning_rate"] = 0.5
    with pytest.raises(ConfigError, match=r"train.learning_rate \(saved 0.01, now 0.5\)"):
        run(from_dict(data))


def test_unfinished_iteration_is_redone_reusing_saved_samples(tiny_model_dir, tmp_path, monkeypatch):
    data = tiny_config_dict(tiny_model_dir, tmp_path, star={"iterations": 1})
    run(from_dict(data))
    metrics = (tmp_path / "metrics.jsonl").read_text().splitlines()
    samples = read_jsonl(tmp_path / "iter_001" / "samples.jsonl")
    # simulate a kill during iteration 1's training: metrics row gone, adapter half-written,
    # sampling progress saved, and a torn last line in the progress file
    (tmp_path / "metrics.jsonl").write_text(metrics[0] + "\n")
    (tmp_path / "iter_001" / "adapter" / "adapter_model.safetensors").write_bytes(b"torn")
    partial = tmp_path / "iter_001" / "samples.partial.jsonl"
    partial.write_text("".join(json.dumps(s) + "\n" for s in samples) + '{"id": "tor')
    import star_lite.loop as loop_module

    sampled = []
    real_generator = loop_module.generator

    def counting_generator(cfg):
        def counting_generate(*args, **kwargs):
            sampled.append(kwargs.get("desc"))
            return real_generator(cfg)(*args, **kwargs)
        return counting_generate

    monkeypatch.setattr(loop_module, "generator", counting_generator)
    rows = run(from_dict(data))
    assert [r["iteration"] for r in rows] == [0, 1]
    assert read_jsonl(tmp_path / "iter_001" / "samples.jsonl") == samples  # reused, identical
    assert sampled == []  # every rationale came from the saved progress: nothing sampled again
    assert (tmp_path / "iter_001" / "adapter" / "adapter_model.safetensors").stat().st_size > 100


def test_iteration_that_keeps_nothing_stops_with_a_message(tiny_model_dir, tmp_path, capsys):
    data = tiny_config_dict(tiny_model_dir, tmp_path, task={"name": "toy_tasks:NeverRight"})
    rows = run(from_dict(data))
    assert [r["iteration"] for r in rows] == [0]
    assert "kept no rationale" in capsys.readouterr().err


def test_report_plots_match_metrics(finished_run):
    from star_lite.cli import main
    from star_lite.report import plot_accuracy, plot_accuracy_by_difficulty, plot_training_set

    _, out, rows = finished_run
    assert main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    for name in ("accuracy.png", "training_set.png", "accuracy_by_difficulty.png"):
        assert (out / name).stat().st_size > 1000 and f"]({name})" in text
    assert list(plot_accuracy(out).axes[0].lines[0].get_ydata()) == [r["accuracy"] for r in rows]
    bars = plot_training_set(out).axes[0].patches
    heights = [b.get_height() for b in bars]
    assert heights == [r["num_train_examples"] - r["num_rationalized"] for r in rows[1:]] + \
        [r["num_rationalized"] for r in rows[1:]] + [r["num_rejected_hint"] for r in rows[1:]]
    by_digit = plot_accuracy_by_difficulty(out).axes[0].lines[0].get_ydata()
    assert list(by_digit) == [r["accuracy_by_difficulty"]["1-digit"] for r in rows]
    assert "Example rationalized rationales" in text


# --- a scripted sampler: the loop's phases on fixed completions ---------------------------------
import math  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

import star_lite.evaluation as evaluation_module  # noqa: E402
import star_lite.loop as loop_module  # noqa: E402
from star_lite.loop import keep_examples  # noqa: E402
from star_lite.methods import method_config  # noqa: E402
from star_lite.sampling import Generation  # noqa: E402
from star_lite.tasks import Problem  # noqa: E402


def scripted_generator(answer, batches=None, seconds_per_batch=0.0, tokens=4):
    """A stand-in for ``sampling.generator``: ``answer(prompt, desc)`` gives each completion; batches
    are handed to on_batch as the real sampler does. ``batches`` collects (desc, size) per batch."""
    def generator(cfg):
        def generate(model, tokenizer, prompts, *, batch_size=16, desc="sampling", on_batch=None, **kwargs):
            out = []
            for start in range(0, len(prompts), batch_size):
                time.sleep(seconds_per_batch)
                gens = [Generation(" " + answer(p, desc), tokens) for p in prompts[start:start + batch_size]]
                if batches is not None:
                    batches.append((desc, len(gens)))
                out += gens
                if on_batch is not None:
                    on_batch(list(range(start, start + len(gens))), gens)
            return out
        return generate
    return generator


def problem_of(prompt, task, problems):
    """The problem a prompt asks (its last question), with or without the hint; None if none."""
    for p in problems:
        if prompt.endswith(task.format_question(p)) or prompt.endswith(task.format_question(p, hint=True)):
            return p
    return None


def _csqa_row(i, key="B"):
    return {"id": f"r{i}", "question": f"Where would you find thing {i}?", "answerKey": key,
            "choices": {"label": ["A", "B", "C", "D", "E"], "text": ["shop", "attic", "river", "moon", "desk"]}}


def _task_section(name, tmp_path):
    if name == "arithmetic":
        return {"name": "arithmetic", "options": {"min_digits": 1, "max_digits": 1, "rationale": "plain"}}
    if name == "gsm8k":
        f = tmp_path / "gsm.jsonl"
        f.write_text("".join(json.dumps({"question": f"Ann has {i} apples and gets {i + 3} more. How many?",
                                         "answer": f"{i} + {i + 3} = {2 * i + 3}\n#### {2 * i + 3}"}) + "\n"
                             for i in range(8)))
        return {"name": "gsm8k", "options": {"data_files": {"train": str(f), "test": str(f)}}}
    if name == "math":
        f = tmp_path / "math.jsonl"
        f.write_text("".join(json.dumps({"problem": f"What is ${i} + {i + 3}$?", "level": "Level 1", "type": "Algebra",
                                         "solution": f"${i} + {i + 3} = \\boxed{{{2 * i + 3}}}$"}) + "\n"
                             for i in range(8)))
        return {"name": "math", "options": {"data_files": {"train": str(f), "test": str(f)}}}
    (tmp_path / "cqa_train.jsonl").write_text("".join(json.dumps(_csqa_row(i)) + "\n" for i in range(8)))
    (tmp_path / "cqa_validation.jsonl").write_text("".join(json.dumps(_csqa_row(50 + i)) + "\n" for i in range(4)))
    return {"name": "commonsense_qa", "options": {"source": str(tmp_path)}}


# completions per task: (answered right, leaking the hint, an honest rationalization that states the answer)
def _scripts(name, p):
    if name == "commonsense_qa":
        mark = f"({p.answer.lower()})"
        return (f"That is where it goes. The answer is {mark}.",
                f"{mark} attic (CORRECT). The answer is {mark}.",
                f"Old things are stored up there. The answer is {mark}.")
    leak = {"arithmetic": f"(Hint: the answer is {p.answer}.) The answer is {p.answer}.",
            "gsm8k": f"The question ends with ({p.answer}). The answer is {p.answer}.",
            "math": f"(Hint: the answer is ${p.answer}$.) The answer is $\\boxed{{{p.answer}}}$."}[name]
    return f"The answer is {p.answer}.", leak, f"Adding them gives {p.answer}. The answer is {p.answer}."


@pytest.mark.parametrize("task_name", ["arithmetic", "gsm8k", "commonsense_qa", "math"])
def test_rationalization_that_leaks_the_hint_is_rejected_and_counted(task_name, tiny_model_dir, tmp_path,
                                                                     monkeypatch):
    data = tiny_config_dict(tiny_model_dir, tmp_path / "run", task={**_task_section(task_name, tmp_path),
                                                                     "num_train": 3, "num_test": 2},
                            star={"iterations": 1})
    cfg = from_dict(data)
    task = load_task(cfg.task.name, **cfg.task.options)
    train = task.load("train", 3, cfg.run.seed)
    right, leaks, honest = train  # answered right; wrong, then a leaking rationalization; wrong, then honest

    def answer(prompt, desc):
        p = problem_of(prompt, task, train)
        if p is None:
            return "I do not know."
        ok, leak, fair = _scripts(task_name, p)
        if desc == "rationale":
            return ok if p is right else "I do not know."
        return leak if p is leaks else fair

    monkeypatch.setattr(loop_module, "generator", scripted_generator(answer))
    monkeypatch.setattr(evaluation_module, "generator", scripted_generator(answer))
    rows = run(cfg)
    it_dir = tmp_path / "run" / "iter_001"
    samples = {(s["id"], s["phase"]): s for s in read_jsonl(it_dir / "samples.jsonl")}
    leaked = samples[(leaks.id, "rationalization")]
    assert leaked["rejected"] == "hint" and leaked["correct"]  # graded right on what is saved, still refused
    assert "CORRECT" not in leaked["completion"]  # saved without the hint mark
    assert "rejected" not in samples[(honest.id, "rationalization")]  # stating the answer is no leak
    kept = read_jsonl(it_dir / "train.jsonl")
    assert sorted(k["id"] for k in kept) == sorted([right.id, honest.id])
    assert rows[1]["num_rejected_hint"] == 1 and rows[1]["num_rationalized"] == 1
    assert rows[1]["num_train_examples"] == 2

    from star_lite.report import write_report
    text = write_report(tmp_path / "run").read_text()
    assert "rejected for leaking the hint" in text and leaked["completion"] in text


def test_keep_examples_caps_distinct_correct_samples_and_skips_rejected():
    task = load_task("arithmetic", min_digits=1, max_digits=1)
    p = Problem("p", "What is 3 + 4?", "7")
    samples = [{"id": "p", "phase": "rationale", "completion": f"Step {i}: 3 + 4 = 7. The answer is 7.",
                "correct": True} for i in range(5)]
    samples.insert(1, dict(samples[0]))  # an exact duplicate does not use up the cap
    samples.append({"id": "p", "phase": "rationalization", "completion": "The hint says 7. The answer is 7.",
                    "correct": True, "rejected": "hint"})
    kept = keep_examples(task, [p], samples, max_per_problem=3)
    assert [k["completion"] for k in kept] == [" Step 0: 3 + 4 = 7. The answer is 7.",
                                               " Step 1: 3 + 4 = 7. The answer is 7.",
                                               " Step 2: 3 + 4 = 7. The answer is 7."]
    assert len(keep_examples(task, [p], samples)) == 5  # no cap: every distinct correct one, never the leak


def test_rest_em_steps_follow_the_kept_set_and_the_cap_binds(tiny_model_dir, tmp_path, monkeypatch):
    data = tiny_config_dict(tiny_model_dir, tmp_path, task={"name": "arithmetic", "num_train": 5, "num_test": 2,
                                                            "options": {"min_digits": 1, "max_digits": 1}},
                            star={"iterations": 1}, train={"batch_size": 4, "start_steps": 1},
                            rest_em={"samples_per_problem": 4, "max_kept_per_problem": 2, "epochs": 2.0},
                            compare={"output_dir": str(tmp_path)})
    cfg = method_config(from_dict(data), "rest-em")
    assert cfg.train.epochs == 2.0 and method_config(from_dict(data), "star").train.epochs == 0.0
    task = load_task(cfg.task.name, **cfg.task.options)
    train = task.load("train", 5, cfg.run.seed)
    drawn: dict[str, int] = {}

    def answer(prompt, desc):  # every sample right, and each one worded differently
        p = problem_of(prompt, task, train)
        if p is None:
            return "I do not know."
        drawn[p.id] = drawn.get(p.id, 0) + 1
        return f"Try {drawn[p.id]}: the sum is {p.answer}. The answer is {p.answer}."

    monkeypatch.setattr(loop_module, "generator", scripted_generator(answer))
    monkeypatch.setattr(evaluation_module, "generator", scripted_generator(answer))
    rows = run(cfg)
    assert drawn == {p.id: 4 for p in train}  # 4 distinct right samples per problem, more than the cap
    kept = read_jsonl(tmp_path / "rest-em" / "iter_001" / "train.jsonl")
    assert sorted(k["id"] for k in kept) == sorted(p.id for p in train for _ in range(2))
    assert rows[1]["steps"] == math.ceil(2.0 * 10 / 4) == 5  # two passes over 10 kept, 4 per step


def test_token_budget_stops_sampling_within_the_iteration(tiny_model_dir, tmp_path):
    data = tiny_config_dict(tiny_model_dir, tmp_path, star={"iterations": 2}, run={"budget_tokens": 60},
                            rest_em={"samples_per_problem": 2}, compare={"output_dir": str(tmp_path)})
    cfg = method_config(from_dict(data), "rest-em")
    rows = run(cfg)
    one_batch = cfg.sampling.batch_size * cfg.sampling.max_new_tokens
    spent = sum(r["generated_tokens"] for r in rows)
    assert 60 <= spent <= 60 + one_batch
    assert [r["iteration"] for r in rows] == [0, 1] and rows[1]["budget_exhausted"]
    samples = read_jsonl(tmp_path / "rest-em" / "iter_001" / "samples.jsonl")
    assert len(samples) < 2 * cfg.task.num_train  # cut short, and trained on what it had
    assert rows[1]["num_train_examples"] > 0 and (tmp_path / "rest-em" / "iter_001" / "adapter").is_dir()


def test_seconds_budget_stops_sampling_within_the_iteration(tiny_model_dir, tmp_path, monkeypatch):
    data = tiny_config_dict(tiny_model_dir, tmp_path, task={"name": "arithmetic", "num_train": 16, "num_test": 2,
                                                            "options": {"min_digits": 1, "max_digits": 1}},
                            sampling={"batch_size": 2}, run={"budget_seconds": 1.0})
    cfg = from_dict(data)
    batches: list = []

    def answer(prompt, desc):  # the right sum, so every sample is kept
        a, b = re.findall(r"What is (\d+) \+ (\d+)\?", prompt)[-1]
        return f"The answer is {int(a) + int(b)}."

    monkeypatch.setattr(loop_module, "generator", scripted_generator(answer, batches, seconds_per_batch=0.25))
    monkeypatch.setattr(evaluation_module, "generator", scripted_generator(answer))
    rows = run(cfg)
    assert [r["iteration"] for r in rows] == [0, 1] and rows[1]["budget_exhausted"]
    # 1 s of 0.25 s batches: the fourth (or, with overhead, fifth) batch spends it; 8 were wanted
    sampled = [n for desc, n in batches if desc in ("rationale", "rationalization")]
    assert 4 <= len(sampled) <= 5 and rows[1]["seconds_sampling"] + rows[1]["seconds_rationalization"] < 1.6
    assert rows[1]["generated_tokens"] == 4 * sum(sampled)


def test_validation_is_evaluated_and_stops_the_loop_when_it_stops_rising(tiny_model_dir, tmp_path, monkeypatch,
                                                                          capsys):
    data = tiny_config_dict(tiny_model_dir, tmp_path, task={"name": "arithmetic", "num_train": 4, "num_test": 4,
                                                            "num_validation": 4,
                                                            "options": {"min_digits": 1, "max_digits": 1}},
                            star={"iterations": 4, "stop_when_validation_stops_rising": True})
    cfg = from_dict(data)
    task = load_task(cfg.task.name, **cfg.task.options)
    train, test = task.load("train", 4, 0), task.load("test", 4, 0)
    validation = task.load("validation", 4, 0)
    right_on_validation = iter([1, 2, 2, 4])  # per evaluation: rises, then stalls at iteration 2
    right_on_test = iter([3, 1, 2, 4])  # test drops after iteration 0: it must not stop the run
    state = {}

    def answer(prompt, desc):
        for problems, counts in ((train, None), (validation, right_on_validation), (test, right_on_test)):
            p = problem_of(prompt, task, problems)
            if p is None:
                continue
            if counts is None:
                return f"The answer is {p.answer}."
            key = ("v" if problems is validation else "t", desc)
            if p is problems[0]:  # the first problem starts each evaluation (prompts are not reordered here)
                state[key] = next(counts)
            return f"The answer is {p.answer}." if problems.index(p) < state[key] else "I do not know."
        return "I do not know."

    monkeypatch.setattr(loop_module, "generator", scripted_generator(answer))
    monkeypatch.setattr(evaluation_module, "generator", scripted_generator(answer))
    rows = run(cfg)
    assert [r["validation_accuracy"] for r in rows] == [0.25, 0.5, 0.5]
    assert [r["accuracy"] for r in rows] == [0.75, 0.25, 0.5]
    assert len(read_jsonl(tmp_path / "iter_002" / "validation.jsonl")) == 4
    assert "no higher than 0.500 at iteration 1" in capsys.readouterr().err
    assert not {p.question for p in validation} & {p.question for p in train + test}

    from star_lite.report import plot_accuracy, write_report
    assert "Best iteration by validation accuracy: 1 " in write_report(tmp_path).read_text()
    validation_line = [ln for ln in plot_accuracy(tmp_path).axes[0].lines if ln.get_label().startswith("validation")]
    assert list(validation_line[0].get_ydata()) == [0.25, 0.5, 0.5]


def test_a_stage_decodes_its_test_and_validation_problems_in_one_call(tmp_path, monkeypatch):
    """evaluate_into with validation problems: one greedy call over both (so they share batches), scored and
    written apart; eval.pass_k's samples are drawn for the test problems only."""
    from star_lite.evaluation import evaluate_into

    cfg = from_dict(tiny_config_dict(tmp_path, tmp_path, task={"name": "arithmetic", "num_validation": 3,
                                                               "options": {"min_digits": 1, "max_digits": 1}},
                                     eval={"batch_size": 16, "pass_k": 2}))
    task = load_task(cfg.task.name, **cfg.task.options)
    test, validation = task.load("test", 4, 0), task.load("validation", 3, 0)
    right = {test[0].id, test[2].id, validation[1].id}
    calls = []

    def answer(prompt, desc):
        p = problem_of(prompt, task, test + validation)
        return f"The answer is {p.answer}." if p.id in right else "I do not know."

    def counting(cfg):
        inner = scripted_generator(answer, tokens=3)(cfg)

        def generate(model, tokenizer, prompts, **kwargs):
            calls.append((kwargs.get("desc"), [problem_of(x, task, test + validation).id for x in prompts]))
            return inner(model, tokenizer, prompts, **kwargs)
        return generate

    monkeypatch.setattr(evaluation_module, "generator", counting)
    result = evaluate_into(tmp_path / "eval.jsonl", None, None, task, test, cfg, few_shot=False,
                           validation=validation)
    assert calls == [("evaluating", [p.id for p in test + validation]),
                     ("evaluating @2", [p.id for p in test for _ in range(2)])]
    assert (result["accuracy"], result["num_eval"], result["validation_accuracy"]) == (0.5, 4, 1 / 3)
    assert result["eval_tokens"] == 3 * 4 + 3 * 4 * 2  # the test problems' greedy and k tokens
    assert result["pass@2"] == 0.5
    assert [r["id"] for r in read_jsonl(tmp_path / "eval.jsonl")] == [p.id for p in test]
    assert [r["correct"] for r in read_jsonl(tmp_path / "validation.jsonl")] == [False, True, False]


def test_each_iteration_trains_a_fresh_adapter_from_the_base(tiny_model_dir, tmp_path, monkeypatch):
    """Through the loop: iteration 2's training starts from a new initialisation, not iteration 1's weights."""
    import torch
    from safetensors.torch import load_file
    from trl import SFTTrainer

    starts = []
    train = SFTTrainer.train

    def spy(self, *args, **kwargs):
        names = [n for n, _ in self.model.named_parameters()]
        starts.append(({n: p.detach().clone() for n, p in self.model.named_parameters() if "lora_" in n},
                       sum("lora_A" in n for n in names)))
        return train(self, *args, **kwargs)

    monkeypatch.setattr(SFTTrainer, "train", spy)
    run(from_dict(tiny_config_dict(tiny_model_dir, tmp_path)))
    assert len(starts) == 2
    (init1, modules1), (init2, modules2) = starts
    assert modules1 == modules2 > 0  # one adapter on the base each time, never one stacked on another
    trained1 = {k.replace(".weight", ".default.weight"): v
                for k, v in load_file(tmp_path / "iter_001" / "adapter" / "adapter_model.safetensors").items()}
    assert init2.keys() == init1.keys() == trained1.keys()
    for name, start in init2.items():
        if "lora_B" in name:  # B starts at zero: the model starts equal to the base, not to iteration 1's
            assert torch.count_nonzero(start) == 0, name
            assert torch.count_nonzero(trained1[name]) > 0, name  # ... though iteration 1 had trained it
        else:  # A is a new draw, seeded by run seed and iteration: neither iteration 1's start nor its result
            assert not torch.equal(start, init1[name]) and not torch.equal(start, trained1[name]), name
