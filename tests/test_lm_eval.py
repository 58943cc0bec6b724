"""star-lite export-lm-eval: the run's problems, prompts and grader as an lm-evaluation-harness task,
and the real harness evaluating a star_lite adapter on the embedded model to the same answers."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from star_lite.config import load_config
from star_lite.lm_eval_export import export_lm_eval, resolve_source
from star_lite.loop import build_task
from star_lite.paired import compare_files, read_results
from star_lite.tasks import Problem

from conftest import tiny_config_dict

ROOT = Path(__file__).parents[1]


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_writes_star_lite_s_prompts_and_grades_with_its_task(tiny_model_dir, tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(tiny_config_dict(tiny_model_dir, tmp_path / "run")))
    cfg = load_config(cfg_file)
    task, _, test = build_task(cfg)
    base = export_lm_eval(cfg, tmp_path / "base")
    rows = [json.loads(line) for line in base["data"].read_text().splitlines()]
    assert [r["id"] for r in rows] == [p.id for p in test] and base["few_shot"]
    assert [r["prompt"] for r in rows] == [task.prompt(p, num_few_shot=cfg.task.num_few_shot) for p in test]
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    tuned = export_lm_eval(cfg, tmp_path / "tuned", adapter=adapter)  # an adapter sees the bare question
    rows = [json.loads(line) for line in tuned["data"].read_text().splitlines()]
    assert not tuned["few_shot"] and [r["prompt"] for r in rows] == [task.prompt(p, num_few_shot=0) for p in test]
    assert f"peft={adapter.resolve()}" in tuned["command"] and "--log_samples" in tuned["command"]
    spec = yaml.safe_load((tmp_path / "tuned" / f"{tuned['task']}.yaml").read_text().replace("!function", "fn"))
    assert spec["generation_kwargs"] == {"until": list(task.stop_strings), "do_sample": False,
                                         "max_gen_toks": cfg.eval.max_new_tokens}
    grader = load_module(tmp_path / "tuned" / f"{tuned['task']}_utils.py")
    doc = rows[0]
    problem = Problem(**json.loads(doc["problem"]))
    # the toy task grades by a hash of the completion, not by its answer: only its own is_correct agrees
    completions = [f"The answer is {n}." for n in range(40)]
    graded = {c: task.is_correct(c, problem) for c in completions}
    assert 0 < sum(graded.values()) < len(graded)
    assert all(grader.process_results(doc, [c]) == {"exact_match": float(g)} for c, g in graded.items())
    # lm-eval hands over the raw response (the space after "A:", the text up to the stop): graded cleaned
    raw = {" " + c + "\n\nQ: next": g for c, g in graded.items()}
    assert all(grader.process_results(doc, [c]) == {"exact_match": float(g)} for c, g in raw.items())


def test_a_run_directory_exports_its_last_adapter(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    (run / "iter_002" / "adapter").mkdir(parents=True)
    (run / "iter_002" / "adapter" / "adapter_config.json").write_text("{}")
    (run / "config.yaml").write_text(yaml.safe_dump(tiny_config_dict(tiny_model_dir, run)))
    (run / "metrics.jsonl").write_text('{"iteration": 0}\n{"iteration": 2}\n{"iteration": 1}\n')
    _, adapter, _ = resolve_source(run)
    assert adapter == run / "iter_002" / "adapter"
    (run / "metrics.jsonl").write_text('{"iteration": 0}\n{"iteration": 3, "stage": "verifier"}\n')
    with pytest.raises(FileNotFoundError, match=r"last stage \(verifier\) has no adapter.*--adapter"):
        resolve_source(run)
    with pytest.raises(FileNotFoundError, match="no adapter at"):
        export_lm_eval(load_config(run / "config.yaml"), tmp_path / "out", adapter=tmp_path / "none")


def test_lm_eval_evaluates_a_star_lite_adapter_to_star_lite_s_answers(tmp_path):
    """The round trip a user runs: star-lite eval and lm_eval on the exported task, the embedded model
    with one star_lite adapter, the same 8 two-digit problems: the same completions, grades and accuracy."""
    pytest.importorskip("lm_eval")
    import torch

    from star_lite.api import evaluate_model
    from star_lite.models import fresh_adapter, load_base_model
    from star_lite.training import save_adapter

    overrides = ["task.num_test=8", "task.options.min_digits=2", f"run.output_dir={tmp_path / 'run'}"]
    autocast = load_config(ROOT / "configs" / "quickstart.yaml", [*overrides, "sampling.autocast=bfloat16"])
    assert "sampling.autocast=off" in export_lm_eval(autocast, tmp_path / "bf16", adapter=None)["note"]
    # the exact round trip: star_lite in float32, as lm-eval computes
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", [*overrides, "sampling.autocast=off"])
    model = fresh_adapter(load_base_model(cfg.model), cfg.model)
    torch.manual_seed(0)
    with torch.no_grad():  # B = 0 would leave the base model: move it, a little
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.002)
    adapter = tmp_path / "adapter"
    save_adapter(model, adapter)
    del model
    ours = evaluate_model(cfg, adapter=adapter, few_shot=True, out=tmp_path / "eval.jsonl")
    out = export_lm_eval(cfg, tmp_path / "task", adapter=adapter, few_shot=True)
    assert "--device cpu" in out["command"] and "dtype=float32" in out["command"]
    command = [sys.executable, "-m", "lm_eval", *out["command"].split()[1:]]  # as printed
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    samples = list((tmp_path / "task" / "results").rglob(f"samples_{out['task']}_*.jsonl"))
    assert len(samples) == 1
    theirs = {json.loads(line)["doc"]["id"]: json.loads(line) for line in samples[0].read_text().splitlines()}
    mine = {r["id"]: r for r in map(json.loads, (tmp_path / "eval.jsonl").read_text().splitlines())}
    assert theirs.keys() == mine.keys() and len(mine) == 8
    from star_lite.loop import build_task

    task = build_task(cfg)[0]
    for pid, r in mine.items():  # lm-eval's raw response, cleaned as star_lite cleans a completion
        assert task.clean_completion(theirs[pid]["resps"][0][0]) == r["completion"], pid
        assert theirs[pid]["exact_match"] == float(r["correct"]), pid
    assert read_results(samples[0]) == read_results(tmp_path / "eval.jsonl")
    d = compare_files(samples[0], tmp_path / "eval.jsonl")
    assert (d["only_a"], d["only_b"], d["accuracy_a"]) == (0, 0, ours["accuracy"])
    assert 0 < ours["accuracy"] < 1  # right and wrong answers both graded
