import warnings

import pytest
import yaml

from star_lite.config import ConfigError, from_dict
from star_lite.rundir import RunDir, append_jsonl, read_jsonl, write_jsonl


def test_torn_last_line_is_ignored_and_cut_before_appending(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b"')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert "unfinished last line" in str(caught[0].message)
    append_jsonl(path, [{"a": 4}])
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}, {"a": 4}]


def test_damaged_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 3}\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        read_jsonl(path)


def test_write_jsonl_is_atomic(tmp_path):
    path = tmp_path / "x" / "rows.jsonl"
    write_jsonl(path, [{"i": i} for i in range(3)])
    assert read_jsonl(path) == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert [p.name for p in path.parent.iterdir()] == ["rows.jsonl"]  # no temporary left behind


def test_config_mismatch_is_refused_only_once_something_finished(tmp_path):
    rd = RunDir(tmp_path)
    rd.prepare(from_dict({}, [f"run.output_dir={tmp_path}"]))
    # nothing finished yet: a new config simply replaces the old one
    assert rd.prepare(from_dict({}, [f"run.output_dir={tmp_path}", "train.learning_rate=0.1"])) == ["train.learning_rate"]
    rd.add_metrics({"iteration": 0, "accuracy": 0.5})
    with pytest.raises(ConfigError, match=r"different config: model.lora_r \(saved 16, now 8\)"):
        rd.prepare(from_dict({}, [f"run.output_dir={tmp_path}", "train.learning_rate=0.1", "model.lora_r=8"]))


def test_a_config_saved_before_a_key_existed_is_read_with_what_that_code_did(tmp_path):
    rd = RunDir(tmp_path)
    rd.prepare(from_dict({}, [f"run.output_dir={tmp_path}"]))
    rd.add_metrics({"iteration": 0, "accuracy": 0.5})
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del saved["train"]["autocast"]  # written before train.autocast existed: training was not autocast
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match=r"train.autocast \(saved 'off', now 'bfloat16'\)"):
        rd.prepare(from_dict({}, [f"run.output_dir={tmp_path}", "train.autocast=bfloat16"]))  # set on purpose: a mix
    cfg = from_dict({}, [f"run.output_dir={tmp_path}"])
    assert rd.prepare(cfg) == [] and cfg.train.autocast == "off"  # left at auto: continues as it was trained
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["autocast"] == "off"
    assert rd.prepare(from_dict({}, [f"run.output_dir={tmp_path}", "train.autocast=off"])) == []


@pytest.mark.parametrize("section, key", [("sampling", "autocast"), ("train", "rl_autocast")])
def test_a_run_saved_before_an_autocast_switch_keeps_computing_in_float32(tmp_path, section, key):
    rd = RunDir(tmp_path)
    rd.prepare(from_dict({}, [f"run.output_dir={tmp_path}"]))
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del saved[section][key]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    cfg = from_dict({}, [f"run.output_dir={tmp_path}"])
    rd.prepare(cfg)
    assert getattr(getattr(cfg, section), key) == "auto"  # nothing done yet: today's default
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    rd.add_metrics({"iteration": 0, "accuracy": 0.5})
    cfg = from_dict({}, [f"run.output_dir={tmp_path}"])
    assert rd.prepare(cfg) == [] and getattr(getattr(cfg, section), key) == "off"


def test_unwritable_output_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="run.output_dir: cannot write to"):
        RunDir(blocker / "run").prepare(from_dict({}))


def test_a_busy_run_directory_is_refused_and_a_killed_holder_blocks_nothing(tiny_model_dir, tmp_path):
    import signal
    import subprocess
    import sys

    import yaml

    from conftest import tiny_config_dict
    from star_lite.cli import main
    from star_lite.rundir import RunDir, RunDirBusy, read_jsonl

    out = tmp_path / "run"
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config_dict(tiny_model_dir, out, star={"iterations": 1})))
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from star_lite.rundir import RunDir\n"
        f"lock = RunDir({str(out)!r}).locked(); lock.__enter__(); print('held', flush=True); time.sleep(120)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirBusy, match=rf"{out} is in use by another star_lite process \(PID {holder.pid}\)"):
            with RunDir(out).locked():
                pass
        assert main(["run", str(cfg_path)]) == 2  # refused at once, before any model is loaded
        assert not (out / "metrics.jsonl").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # a kill leaves the lock file, not the lock
        holder.wait()
    assert main(["run", str(cfg_path)]) == 0
    assert [r["iteration"] for r in read_jsonl(out / "metrics.jsonl")] == [0, 1]
    with RunDir(out).locked(), RunDir(out).locked():  # re-entrant within one process
        pass


def test_a_comparison_holding_a_run_saved_before_sampling_autocast_runs_every_method_alike(tmp_path):
    """A method added to an old comparison must not generate in bfloat16 beside runs that generated in float32."""
    from star_lite.compare import adopt_saved_comparison

    old = tmp_path / "cmp" / "seed_0" / "star"
    RunDir(old).prepare(from_dict({}, [f"run.output_dir={old}"]))
    saved = yaml.safe_load((old / "config.yaml").read_text())
    del saved["sampling"]["autocast"]
    (old / "config.yaml").write_text(yaml.safe_dump(saved))
    cfg = from_dict({}, [f"compare.output_dir={tmp_path / 'cmp'}"])
    assert adopt_saved_comparison(cfg, tmp_path / "cmp") == [] and cfg.sampling.autocast == "auto"  # nothing run yet
    RunDir(old).add_metrics({"iteration": 0, "accuracy": 0.5})
    assert adopt_saved_comparison(cfg, tmp_path / "cmp") == ["sampling.autocast"]
    assert cfg.sampling.autocast == "off"
