"""The STaR loop end to end on a tiny random model in 4-bit on the CPU, and its resume."""

import json

import pytest
import yaml
from peft import PeftModel

from star_lite.config import ConfigError, from_dict
from star_lite.loop import run
from star_lite.models import load_base_model
from star_lite.rundir import read_jsonl

from conftest import tiny_config_dict


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("star_run")
    cfg = from_dict(tiny_config_dict(tiny_model_dir, out))
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
        for k in kept:
            assert "Hint" not in k["prompt"] and k["prompt"].startswith("Q: ") and k["prompt"].endswith("\nA:")
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
        [r["num_rationalized"] for r in rows[1:]]
    by_digit = plot_accuracy_by_difficulty(out).axes[0].lines[0].get_ydata()
    assert list(by_digit) == [r["accuracy_by_difficulty"]["1-digit"] for r in rows]
    assert "Example rationalized rationales" in text
