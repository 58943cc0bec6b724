"""``star-lite export-lm-eval``: the run's held-out problems as an lm-evaluation-harness task.

The task directory holds a jsonl of the problems with the exact prompt star_lite's evaluation
gives each one (few-shot for the base model, the bare question for an adapter, as `star-lite
eval` decides), a task YAML with the same greedy generation (the task's stop strings, the same
token cap), and a small module whose ``process_results`` grades each completion with the task's
own ``is_correct``, so lm-eval's ``exact_match`` is star_lite's grade. Each doc keeps the
problem's ``id``, so ``star-lite paired`` matches lm-eval's ``--log_samples`` file to
star_lite's ``eval.jsonl`` problem by problem.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from .api import default_few_shot
from .config import Config, load_config
from .rundir import RunDir

UTILS = '''"""Written by star-lite export-lm-eval: grades lm-eval's completions with star_lite's task."""

import json

from star_lite.tasks import Problem, load_task

TASK = load_task({name!r}, **json.loads({options!r}))


def process_results(doc, results):
    p = json.loads(doc["problem"])
    problem = Problem(p["id"], p["question"], p["answer"], p.get("meta") or {{}})
    # graded as star_lite grades: the completion cut at the task's stop strings and stripped
    return {{"exact_match": float(TASK.is_correct(TASK.clean_completion(results[0]), problem))}}
'''


def _last_stage(run_dir: Path) -> tuple[Path | None, bool | None]:
    """The last stage's adapter (None for iteration 0, the base model) and, where the stage says so,
    whether it was evaluated few-shot (grpo from the base: ``rl_init: base``)."""
    rundir = RunDir(run_dir)
    row = rundir.last_stage()
    if row is None:
        raise FileNotFoundError(f"{run_dir}: no finished stage in metrics.jsonl")
    if row["iteration"] == 0:
        return None, None
    adapter = rundir.iter_dir(row["iteration"]) / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{run_dir}: its last stage ({row.get('stage', 'iteration ' + str(row['iteration']))}) "
                                f"has no adapter at {adapter} (v-star's verifier stage picks among k samples, "
                                "which an lm-eval task does not); give --adapter, e.g. a generator's iter_NNN/adapter")
    return adapter, (True if row.get("rl_init") == "base" else None)


def resolve_source(source: str | Path, overrides: list[str] | None = None,
                   adapter: str | Path | None = None) -> tuple[Config, Path | None, bool | None]:
    """A config file, or a run directory (its config.yaml and, unless given, its last stage's adapter);
    with the prompt that stage was evaluated with when it differs from the rule (else None)."""
    source = Path(source)
    if source.is_dir():
        if not (source / "config.yaml").is_file():
            raise FileNotFoundError(f"{source} is a directory without config.yaml: give a run directory or a config")
        cfg = load_config(source / "config.yaml", overrides)
        if adapter:
            return cfg, Path(adapter), None
        return (cfg, *_last_stage(source))
    return load_config(source, overrides), Path(adapter) if adapter else None, None


def export_lm_eval(cfg: Config, out_dir: str | Path, adapter: str | Path | None = None,
                   few_shot: bool | None = None, task_name: str | None = None) -> dict[str, Any]:
    """Write the task directory; returns its task name, files and the lm_eval command to run."""
    from .loop import build_task
    from .models import resolve_device, resolve_dtype, resolve_model_path
    from .sampling import uses_autocast

    task, _, test = build_task(cfg)
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no adapter at {adapter} (expected adapter_config.json there)")
    if few_shot is None:
        few_shot = default_few_shot(cfg, adapter)
    shots = cfg.task.num_few_shot if few_shot else 0
    name = task_name or "star_lite_" + re.sub(r"[^a-z0-9_]+", "_", task.name.lower()).strip("_")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"{name}.jsonl"
    with data.open("w") as f:
        for p in test:
            f.write(json.dumps({"id": p.id, "prompt": task.prompt(p, num_few_shot=shots), "answer": p.answer,
                                "problem": json.dumps(dataclasses.asdict(p), default=str)}) + "\n")
    (out / f"{name}_utils.py").write_text(UTILS.format(name=cfg.task.name, options=json.dumps(cfg.task.options)))
    import yaml

    spec = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "prompt",
        "doc_to_target": "answer",
        "target_delimiter": "",
        "num_fewshot": 0,  # the worked examples, when any, are already in each prompt
        "generation_kwargs": {"until": list(task.stop_strings), "do_sample": False,
                              "max_gen_toks": cfg.eval.max_new_tokens},
        "process_results": f"!function {name}_utils.process_results",
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0, "star_lite_prompt": "few-shot" if few_shot else "zero-shot",
                     "num_problems": len(test)},
    }
    text = yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)
    text = text.replace(f"'!function {name}_utils.process_results'", f"!function {name}_utils.process_results")
    (out / f"{name}.yaml").write_text(text)
    device = resolve_device(cfg.model.device)
    dtype = str(resolve_dtype(cfg.model.compute_dtype, device)).removeprefix("torch.")
    model_args = f"pretrained={resolve_model_path(cfg.model.name_or_path)}"
    if adapter is not None:
        model_args += f",peft={Path(adapter).resolve()}"
    command = (f"lm_eval --model hf --model_args {model_args},dtype={dtype} --device {device} --include_path {out} "
               f"--tasks {name} --batch_size 1 --log_samples --output_path {out / 'results'}")
    note = None
    if cfg.model.load_in_4bit:  # lm-eval's hf model loads the checkpoint as it is: no NF4 quantization
        note = (f"the run's base model is 4-bit NF4 (model.load_in_4bit); lm-eval loads it unquantized in {dtype}, "
                "so its answers can differ from star_lite's; compare with star-lite eval --set "
                "model.load_in_4bit=false")
    elif uses_autocast(cfg):  # lm-eval has no autocast: it computes in the dtype it loads
        note = ("star_lite generates under bfloat16 autocast here (sampling.autocast); lm-eval computes in "
                f"{dtype}, so a few greedy answers can differ; compare with star-lite eval --set sampling.autocast=off")
    return {"task": name, "dir": out, "data": data, "num_problems": len(test), "few_shot": few_shot,
            "command": command, "note": note}
