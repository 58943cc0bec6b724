import subprocess
import sys

import yaml

from star_lite.cli import main

from conftest import tiny_config_dict


def test_help_explains_every_option():
    out = subprocess.run([sys.executable, "-m", "star_lite.cli", "run", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for option in ("--set", "--debug", "config"):
        assert option in out.stdout


def test_bad_config_is_one_message_without_traceback(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  learning_rat: 0.1\n")
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'train.learning_rat'. Did you mean 'learning_rate'?" in err
    assert "Traceback" not in err
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_unreachable_model_is_a_clear_error(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name_or_path": str(tmp_path / "no_model")},
                                   "run": {"output_dir": str(tmp_path / "run")}}))
    assert main(["eval", str(cfg), "--set", "task.num_test=2"]) == 2
    err = capsys.readouterr().err
    assert "cannot load a tokenizer from" in err and "Traceback" not in err


def test_eval_and_run_on_tiny_model(tiny_model_dir, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    data = tiny_config_dict(tiny_model_dir, tmp_path / "run", star={"iterations": 1})
    cfg.write_text(yaml.safe_dump(data))
    assert main(["eval", str(cfg), "--set", "model.load_in_4bit=false", "--out", str(tmp_path / "e.jsonl")]) == 0
    assert "accuracy" in capsys.readouterr().out and (tmp_path / "e.jsonl").is_file()
    assert main(["run", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "iteration" in out and "run directory" in out
    adapter = tmp_path / "run" / "iter_001" / "adapter"
    assert main(["eval", str(cfg), "--adapter", str(adapter)]) == 0
    assert "iter_001/adapter" in capsys.readouterr().out


def test_output_to_a_file_gets_no_progress_bars_from_any_library(tiny_model_dir, tmp_path):
    """A run logged to a file: no star_lite bar, no trainer step bar, no "Loading weights" bar;
    STAR_LITE_PROGRESS=1 brings them all back (so the first half can fail)."""
    import os
    from pathlib import Path

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config_dict(tiny_model_dir, tmp_path / "run", star={"iterations": 1},
                                                   model={"load_in_4bit": False})))
    env = {k: v for k, v in os.environ.items() if k not in ("STAR_LITE_PROGRESS", "CI")}
    env["PYTHONPATH"] = str(Path(__file__).parent)
    logs = {}
    for setting in ("", "1"):
        if setting:
            env["STAR_LITE_PROGRESS"] = setting
            cfg.write_text(cfg.read_text().replace(str(tmp_path / "run"), str(tmp_path / "run_bars")))
        with open(tmp_path / f"log{setting}.txt", "w") as log:  # stderr to a file, as with `2> log`
            out = subprocess.run([sys.executable, "-m", "star_lite.cli", "run", str(cfg)], env=env,
                                 stdout=log, stderr=log)
        assert out.returncode == 0, (tmp_path / f"log{setting}.txt").read_text()
        logs[setting] = (tmp_path / f"log{setting}.txt").read_text()
    for bar in ("Loading weights", "rationale", "evaluating", "it/s]"):
        assert bar not in logs[""], bar
    assert "Loading weights" in logs["1"] and "%|" in logs["1"]
    # star_lite's own lines only: its messages and the CLI's table; no trainer dict per logging step,
    # no library warning (each of these was in a quickstart log before)
    table = ("iteration ", "run directory: ")
    foreign = [line for line in logs[""].splitlines() if line.strip() and not line.startswith("[star_lite] ")
               and not line.startswith(table) and not line.split()[0].isdigit()]
    assert not foreign, foreign
    assert "'loss'" in logs["1"]  # with bars the trainer's log dicts come back with them


def test_the_embedded_model_s_conversion_logs_no_bar_to_a_file(tmp_path):
    """The one-time GGUF conversion, logged to a file: star_lite's line, no GGUF reader bar, no
    "Writing model shards" bar (both were in a fresh clone's log)."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("STAR_LITE_PROGRESS", "CI")}
    env["STAR_LITE_CACHE"] = str(tmp_path / "cache")
    with open(tmp_path / "log.txt", "w") as log:
        out = subprocess.run([sys.executable, "-c", "from star_lite.models import embedded_model_path; "
                              "print(embedded_model_path('smollm2-135m-instruct'))"], env=env, stdout=log, stderr=log)
    text = (tmp_path / "log.txt").read_text()
    assert out.returncode == 0, text
    assert "[star_lite] converting the embedded model" in text
    assert (tmp_path / "cache" / "models" / "smollm2-135m-instruct" / "config.json").is_file()
    for bar in ("GGUF tensors", "Writing model shards", "%|"):
        assert bar not in text, text
