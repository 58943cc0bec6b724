"""A run survives SIGKILL at any moment; bad text never breaks grading; OOM lowers the batch."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from star_lite.rundir import read_jsonl
from star_lite.sampling import generate
from star_lite.tasks import ArithmeticTask, CommonsenseQATask, GSM8KTask, Problem

from conftest import tiny_config_dict

COMPARED = ("iteration", "accuracy", "num_train_examples", "num_rationalized", "num_correct_samples", "steps",
            "generated_tokens", "train_loss")


def _start(cfg_path: Path, kill_at: str = "") -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent), STAR_LITE_PROGRESS="0",
               STAR_LITE_KILL_AT=kill_at)
    return subprocess.Popen([sys.executable, "-m", "star_lite.cli", "run", str(cfg_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _metrics(out: Path) -> list[dict]:
    return [{k: r.get(k) for k in COMPARED} for r in read_jsonl(out / "metrics.jsonl")]


def test_sigkill_at_several_points_then_resume_matches_uninterrupted_run(tiny_model_dir, tmp_path):
    def config(out):
        data = tiny_config_dict(tiny_model_dir, out, model={"load_in_4bit": False}, sampling={"batch_size": 4})
        path = tmp_path / f"{out.name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    reference = tmp_path / "reference"
    proc = _start(config(reference))
    assert proc.wait() == 0, proc.stderr.read()
    expected = _metrics(reference)
    assert [r["iteration"] for r in expected] == [0, 1, 2]

    out = tmp_path / "killed"
    cfg = config(out)
    # each process dies by its own SIGKILL at a named point (rundir.fault_point); the next resumes
    kills = [
        ("samples_saved:2", lambda: len(read_jsonl(out / "iter_001" / "samples.partial.jsonl")) == 8
         and not (out / "iter_001" / "samples.jsonl").exists()),  # mid-sampling: 2 batches of 4 saved
        ("train_step:2", lambda: (out / "iter_001" / "train.jsonl").exists()
         and not (out / "iter_001" / "adapter").exists()),  # mid-training: kept set written, no adapter
        ("adapter_saved:2", lambda: (out / "iter_002" / "adapter").exists()
         and len(read_jsonl(out / "metrics.jsonl")) == 2),  # iteration 2's adapter written, its row not
    ]
    for kill_at, state in kills:
        proc = _start(cfg, kill_at)
        assert proc.wait() == -signal.SIGKILL, (kill_at, proc.stderr.read())
        assert state(), f"killed at {kill_at}, but the run directory is not in the state that point means"
    proc = _start(cfg)
    assert proc.wait() == 0, proc.stderr.read()
    assert _metrics(out) == expected
    assert not list(out.rglob(".*.tmp")), "a temporary file was left behind"


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_extraction_and_grading_accept_any_string(text):
    problem = Problem("p", "q", "12")
    for task in (ArithmeticTask(), GSM8KTask(), CommonsenseQATask()):
        answer = task.extract_answer(text)
        assert answer is None or isinstance(answer, str)
        assert task.is_correct(text, problem) in (True, False)
        assert isinstance(task.clean_completion(text), str)


@pytest.mark.parametrize("prefix_attention", ["shared", "expand"])
def test_out_of_memory_while_sampling_lowers_the_batch_size(tiny_model_dir, capsys, monkeypatch, prefix_attention):
    """Both decode paths: star_lite's own loop (``shared``) and transformers' generate (``expand``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from star_lite.sampling import prefix_decode

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    sizes = []

    def with_small_memory(real, rows_of):
        def call(*args, **kwargs):
            sizes.append(rows_of(*args, **kwargs))
            if sizes[-1] > 2:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return real(*args, **kwargs)
        return call

    if prefix_attention == "shared":
        monkeypatch.setattr(prefix_decode, "decode", with_small_memory(prefix_decode.decode, lambda m, c, n, tails, **kw: len(tails)))
    else:
        model.generate = with_small_memory(model.generate, lambda **kw: kw["input_ids"].shape[0])
    prompts = [f"Q: What is {i} + 1?\nA:" for i in range(5)]
    gens = generate(model, tok, prompts, batch_size=8, max_new_tokens=3, prefix_attention=prefix_attention)
    assert len(gens) == 5 and all(g is not None for g in gens)
    assert sizes[:3] == [5, 4, 2] and max(sizes[2:]) <= 2
    assert "batch size lowered to 2" in capsys.readouterr().err


def test_empty_or_unreadable_dataset_is_refused_before_any_model_is_loaded(tmp_path, capsys):
    from star_lite.cli import main

    empty = tmp_path / "train.jsonl"
    empty.write_text("")
    broken = tmp_path / "test.jsonl"
    broken.write_text('{"question": "a", "answer": "#### 1"}\n{not json\n')
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tmp_path / "no_model_here")},  # never reached
        "task": {"name": "gsm8k", "options": {"data_files": {"train": str(empty), "test": str(broken)}}},
        "run": {"output_dir": str(tmp_path / "run")}}))
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{empty}: the file is empty" in err and "Traceback" not in err
    empty.write_text('{"question": "a", "answer": "#### 1"}\n')
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{broken}: line 2 is not valid JSON" in err and "cannot load" not in err


def test_non_finite_loss_stops_with_what_to_change(tiny_model_dir, tmp_path, capsys):
    from star_lite.cli import main

    data = tiny_config_dict(tiny_model_dir, tmp_path / "run", model={"load_in_4bit": False},
                            train={"learning_rate": 1e30, "start_steps": 4, "logging_steps": 1})
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(data))
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "became nan at step" in err and "Lower train.learning_rate" in err and "Traceback" not in err
    assert [r["iteration"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [0]
