"""The preference methods' direction on sets built by hand, where the right answer is known: DPO raises
the chosen rationale's log-ratio above the rejected one's, the trained verifier scores right candidates
above wrong ones, and the verifier's pairs come from every generator iteration."""

import pytest
import torch

from star_lite.config import from_dict
from star_lite.methods import verifier_pairs
from star_lite.models import detach_adapter, fresh_adapter, load_base_model, load_tokenizer
from star_lite.rl import load_verifier, train_dpo, verifier_scores
from star_lite.rundir import RunDir, write_jsonl
from star_lite.tasks import Problem, load_task

from conftest import tiny_config_dict


def _pairs():
    # the same question twice over, the rationales differing only in whether the sum is right
    return [{"prompt": f"Q: What is {i} + {j}?\nA:", "chosen": f" {i} + {j} = {i + j}. The answer is {i + j}.",
             "rejected": f" {i} + {j} = {i + j + 1}. The answer is {i + j + 1}."} for i in range(4) for j in range(2)]


@pytest.mark.parametrize("precision", ["4-bit", "bfloat16"])
def test_dpo_raises_the_chosen_log_ratio_and_the_verifier_scores_right_above_wrong(tiny_model_dir, tmp_path,
                                                                                   precision):
    """Also under train.rl_autocast=bfloat16 (an unquantized float32 base as one bfloat16 copy), training and
    scoring alike."""
    from star_lite.trainers.args import rl_precision

    extra = {"model": {"load_in_4bit": False}, "train": {"rl_autocast": "bfloat16"}} if precision == "bfloat16" else {}
    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path, **extra))
    tok = load_tokenizer(cfg.model.name_or_path)
    policy = fresh_adapter(load_base_model(cfg.model), cfg.model)
    policy.save_pretrained(str(tmp_path / "start"))  # the reference: the policy before DPO (LoRA B = 0: the base)
    pairs = _pairs()
    model, trained = train_dpo(policy, tok, pairs, cfg, tmp_path, steps=30, learning_rate=1e-2, batch_size=4,
                               beta=0.1, reference=tmp_path / "start")
    # TRL's own log: the implicit reward of the chosen rationales ends above the rejected ones'
    last = trained.history[-1]
    assert last["rewards/chosen"] > last["rewards/rejected"], trained.history[-3:]
    # scored afresh by star_lite: beta * (log pi - log pi_ref), chosen above rejected on every pair
    verifier = load_verifier(detach_adapter(model), tmp_path / "adapter", tmp_path / "start")
    prompts = [p["prompt"] for p in pairs]
    with rl_precision(verifier, cfg, autocast=True) as bf16:
        chosen = verifier_scores(verifier, tok, prompts, [p["chosen"] for p in pairs], beta=0.1)
        rejected = verifier_scores(verifier, tok, prompts, [p["rejected"] for p in pairs], beta=0.1)
    assert bf16 is (precision == "bfloat16")
    assert all(c > r for c, r in zip(chosen, rejected)), list(zip(chosen, rejected))
    assert all(p.dtype != torch.bfloat16 for p in verifier.parameters())  # float32 (or NF4) again after


def test_verifier_pairs_come_from_every_generator_iteration(tmp_path):
    task = load_task("arithmetic", min_digits=1, max_digits=1)
    train = [Problem("a", "What is 3 + 4?", "7"), Problem("b", "What is 2 + 2?", "4")]
    rundir = RunDir(tmp_path)
    # iteration 1: a right on "a"; iteration 2: a wrong on "a" and both kinds on "b"; a hinted sample
    # (rationalization) is never verifier data
    write_jsonl(rundir.iter_dir(1) / "samples.jsonl", [
        {"id": "a", "phase": "rationale", "completion": " 3 + 4 = 7. The answer is 7.", "correct": True},
        {"id": "b", "phase": "rationalization", "completion": " 2 + 2 = 5. The answer is 5.", "correct": False}])
    write_jsonl(rundir.iter_dir(2) / "samples.jsonl", [
        {"id": "a", "phase": "rationale", "completion": " 3 + 4 = 8. The answer is 8.", "correct": False},
        {"id": "b", "phase": "rationale", "completion": " 2 + 2 = 4. The answer is 4.", "correct": True},
        {"id": "b", "phase": "rationale", "completion": " 2 + 2 = 3. The answer is 3.", "correct": False}])
    pairs = verifier_pairs(task, train, rundir, [1, 2], max_pairs_per_problem=4)
    got = sorted((p["id"], p["chosen"].split(".")[0], p["rejected"].split(".")[0]) for p in pairs)
    assert got == [("a", " 3 + 4 = 7", " 3 + 4 = 8"), ("b", " 2 + 2 = 4", " 2 + 2 = 3")]
    assert verifier_pairs(task, train, rundir, [2], max_pairs_per_problem=4) == [p for p in pairs if p["id"] == "b"]


@pytest.mark.parametrize("cap, want", [(1, 1), (4, 4), (9, 6)])
def test_pairs_per_problem_are_capped_at_every_right_wrong_combination(tmp_path, cap, want):
    task = load_task("arithmetic", min_digits=1, max_digits=1)
    train = [Problem("a", "What is 3 + 4?", "7")]
    rundir = RunDir(tmp_path)
    right = [{"id": "a", "phase": "rationale", "completion": f" {x}. The answer is 7.", "correct": True} for x in "xy"]
    wrong = [{"id": "a", "phase": "rationale", "completion": f" {x}. The answer is {n}.", "correct": False}
             for n, x in enumerate("uvw")]
    write_jsonl(rundir.iter_dir(1) / "samples.jsonl", right + wrong)
    assert len(verifier_pairs(task, train, rundir, [1], max_pairs_per_problem=cap)) == want
