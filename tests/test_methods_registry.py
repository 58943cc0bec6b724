"""The methods registry: every method is one registered module; a user's method registers from outside the
package and runs in a comparison by its import path, beside the built-in ones."""

import csv
import subprocess
import sys

import pytest
import yaml

from star_lite.config import ConfigError, from_dict
from star_lite.rundir import read_jsonl

from conftest import tiny_config_dict

BUILT_IN = ["few-shot", "sft-direct", "star", "star-no-rationalization", "rest-em", "self-motivated", "grpo", "dpo",
            "v-star", "adastar"]


def test_every_built_in_method_is_registered_with_its_own_sections():
    from star_lite.config import METHODS
    from star_lite.methods import section_readers

    assert list(METHODS)[:len(BUILT_IN)] == BUILT_IN
    assert section_readers() == {"rest_em": {"rest-em"}, "rl": {"self-motivated", "grpo"}, "dpo": {"dpo"},
                                 "v_star": {"v-star"}, "adastar": {"adastar"}}


def test_compare_help_lists_every_registered_method():
    out = subprocess.run([sys.executable, "-m", "star_lite", "compare", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for name in BUILT_IN:
        assert f"  {name} " in out, name


def test_an_unknown_or_unimportable_method_is_refused_naming_it():
    with pytest.raises(ConfigError, match=r"compare.methods: unknown method\(s\) stra"):
        from_dict({"compare": {"methods": ["stra"], "reference": "stra"}})
    with pytest.raises(ConfigError, match=r"cannot import 'no_such_package' for method 'no_such_package:x'"):
        from_dict({"compare": {"methods": ["no_such_package:x"], "reference": "no_such_package:x"}})


def test_a_users_method_registered_outside_the_package_runs_in_a_comparison(tiny_model_dir, tmp_path):
    from star_lite.cli import main

    data = tiny_config_dict(tiny_model_dir, tmp_path / "unused")
    data["compare"] = {"methods": ["few-shot", "toy_methods:self-consistency"], "output_dir": str(tmp_path),
                       "seeds": [0], "reference": "few-shot"}
    cfg_path = tmp_path / "compare.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    assert main(["compare", str(cfg_path)]) == 0
    rows = read_jsonl(tmp_path / "seed_0" / "toy_methods:self-consistency" / "metrics.jsonl")
    assert [r["stage"] for r in rows] == ["few-shot", "self-consistency"]
    assert rows[1]["num_eval"] == data["task"]["num_test"] and rows[1]["eval_tokens"] > 0
    with open(tmp_path / "comparison.csv") as f:
        table = [r for r in csv.DictReader(f) if r["method"] == "toy_methods:self-consistency"]
    assert [r["iteration"] for r in table] == ["0", "1"]
