"""Run directories written by the landed release (tests/fixtures/saved_runs, made by tests/fixtures/make_runs.py)
resume under today's code: method names, stage values, saved config sections and files stay readable."""

import shutil
from pathlib import Path

import yaml

from star_lite.config import from_dict
from star_lite.rundir import read_jsonl

FIXTURE = Path(__file__).parent / "fixtures" / "saved_runs"


def _saved_runs(tmp_path: Path, model_dir: Path) -> Path:
    runs = tmp_path / "runs"
    shutil.copytree(FIXTURE, runs)
    for path in runs.rglob("*"):
        if path.is_file() and path.suffix in (".yaml", ".json", ".jsonl"):
            path.write_text(path.read_text().replace("{RUNS}", str(runs)).replace("{MODEL}", str(model_dir)))
    return runs


def _config(runs: Path, method: str, **overrides) -> dict:
    data = yaml.safe_load((runs / method / "config.yaml").read_text())
    data["compare"] = {**data.get("compare", {}), "output_dir": str(runs)}
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    return data


def test_a_saved_star_run_continues_with_its_finished_iterations_kept(tiny_model_dir, tmp_path):
    from star_lite.methods import run_method

    runs = _saved_runs(tmp_path, tiny_model_dir)
    before = read_jsonl(runs / "star" / "metrics.jsonl")
    assert [r["stage"] for r in before] == ["few-shot", "star"]
    rows = run_method(from_dict(_config(runs, "star", star={"iterations": 2})), "star")
    assert rows[:2] == before  # iterations 0 and 1 were read back, not redone
    assert [r["iteration"] for r in rows] == [0, 1, 2] and rows[2]["stage"] == "star"
    assert (runs / "star" / "iter_002" / "adapter" / "adapter_model.safetensors").exists()


def test_a_saved_finished_grpo_run_is_read_as_finished(tiny_model_dir, tmp_path):
    from star_lite.methods import run_method

    runs = _saved_runs(tmp_path, tiny_model_dir)
    rollouts = runs / "grpo" / "iter_001" / "rollouts.jsonl"
    saved = rollouts.read_text()
    before = read_jsonl(runs / "grpo" / "metrics.jsonl")
    assert [r["stage"] for r in before] == ["few-shot", "rl"]
    assert run_method(from_dict(_config(runs, "grpo")), "grpo") == before  # nothing re-run
    assert rollouts.read_text() == saved
