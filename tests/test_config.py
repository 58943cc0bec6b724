from pathlib import Path

import pytest
import yaml

from star_lite.config import ConfigError, diff_keys, from_dict, load_config
from star_lite.tasks import load_task

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert any(p.name == "quickstart.yaml" for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads_and_validates(path):
    cfg = load_config(path)
    assert cfg.star.iterations >= 1
    if ":" not in cfg.task.name:
        load_task(cfg.task.name, **cfg.task.options)  # the task accepts its options


def test_overrides_and_types():
    cfg = from_dict({}, ["star.iterations=5", "train.learning_rate=1e-4", "model.lora_target_modules=q_proj,v_proj",
                         "task.options={min_digits: 2}", "task.options.max_digits=3"])
    assert cfg.star.iterations == 5 and cfg.train.learning_rate == 1e-4
    assert cfg.model.lora_target_modules == ["q_proj", "v_proj"] and cfg.task.options == {"min_digits": 2, "max_digits": 3}


def test_a_bare_off_in_yaml_is_the_word_off_where_a_string_is_expected(tmp_path):
    # YAML 1.1 reads `off` as false: `--set train.autocast=off` and `autocast: off` in a file must still work
    assert from_dict({}, ["train.autocast=off"]).train.autocast == "off"
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  autocast: off\n")
    assert load_config(path).train.autocast == "off"
    with pytest.raises(ConfigError, match="train.lm_head"):
        from_dict({}, ["train.lm_head=off"])  # still checked against the field's choices


def test_set_reaches_any_depth_of_a_mapping():
    cfg = from_dict({"task": {"options": {"data_files": {"train": "a.jsonl"}}}},
                    ["task.options.data_files.test=x.jsonl", "compare.seeds=[1, 2]"])
    assert cfg.task.options == {"data_files": {"train": "a.jsonl", "test": "x.jsonl"}}
    assert cfg.compare.seeds == [1, 2]
    with pytest.raises(ConfigError, match="the key must be section.key"):
        from_dict({}, ["task..x=1"])


@pytest.mark.parametrize("data, overrides, message", [
    ({"train": {"learning_rat": 1e-4}}, [], r"unknown key 'train.learning_rat'. Did you mean 'learning_rate'\?"),
    ({"trian": {}}, [], r"unknown key 'trian'. Did you mean 'train'\?"),
    ({"star": {"iterations": "three"}}, [], r"star.iterations: expected an integer, got 'three'"),
    ({"star": {"rationalization": "yes"}}, [], r"star.rationalization: expected true or false"),
    ({}, ["sampling.top_p=1.5"], r"sampling.top_p: must be between 0.0 and 1.0, got 1.5"),
    ({}, ["train.batch_size=0"], r"train.batch_size: must be at least 1, got 0"),
    ({}, ["model.device=tpu"], r"model.device: must be one of"),
    ({}, ["iterations=3"], r"the key must be section.key"),
    ({}, ["star.iterations.x=3"], r"star.iterations: expected an integer, got {'x': 3}"),
    ({}, ["star.iterations"], r"expected section.key=value"),
    ({}, ["star.stop_when_validation_stops_rising=true"], r"needs task.num_validation > 0"),
    ({}, ["rest_em.epochs=-1"], r"rest_em.epochs: must be at least 0.0"),
    ({}, ["sampling.vllm_options.tensor_parallel_size=0"], r"sampling.vllm_options.tensor_parallel_size: must be"),
])
def test_bad_configs_name_the_field(data, overrides, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(data, overrides)


def _checked_fields():
    import dataclasses

    from star_lite.config import Config

    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(section.default_factory()):
            if f.metadata:
                yield f"{section.name}.{f.name}", f


def test_every_range_and_choice_sits_beside_its_field_and_is_checked():
    """Each ``at_least`` / ``between`` / ``one_of`` field: a value outside it is refused, naming the field; its
    own default passes. A new field with a range needs nothing else to be checked."""
    checked = dict(_checked_fields())
    assert {"sampling.top_p", "rl.num_generations", "rl.rollout_sampler", "run.budget_axis"} <= set(checked)
    for dotted, f in checked.items():
        section, key = dotted.split(".")
        cfg = from_dict({})
        if "choices" in f.metadata:
            bad = "no-such-choice"
            message = rf"{dotted}: must be one of"
        else:
            lo, hi = f.metadata["range"]
            bad = hi * 2 + 1 if hi is not None else lo - 1
            message = rf"{dotted}: must be (at least|between)"
        with pytest.raises(ConfigError, match=message):
            from_dict({section: {key: bad}})
        assert getattr(getattr(cfg, section), key) == f.default


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not sections\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(bad)


def test_diff_keys():
    a = from_dict({}).to_dict()
    b = from_dict({}, ["star.iterations=9", "train.learning_rate=0.5"]).to_dict()
    assert diff_keys(a, b) == ["star.iterations", "train.learning_rate"]
    assert diff_keys(a, yaml.safe_load(yaml.safe_dump(a))) == []


def test_reference_config_lists_every_key_with_its_default():
    from star_lite.config import Config, flatten

    path = Path(__file__).parents[1] / "configs" / "reference.yaml"
    reference = flatten(yaml.safe_load(path.read_text()))
    defaults = flatten(Config().to_dict())
    assert reference.keys() == defaults.keys()
    assert load_config(path).to_dict() == Config().to_dict()  # and its values are the defaults


def test_readme_task_example_is_a_working_task():
    import re

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(# mypkg/tasks.py.*?)```", readme, re.S).group(1)
    namespace: dict = {}
    exec(code, namespace)
    task = namespace["ReverseWord"]()
    train, test = task.load("train", 0, seed=0), task.load("test", 2, seed=0)
    assert train and len(test) == 2 and not {p.id for p in train} & {p.id for p in test}
    for ex in task.exemplars():
        assert task.is_correct(ex.rationale, ex.problem)
    assert task.prompt(test[0], num_few_shot=2).endswith(f"Q: {test[0].question}\nA:")
