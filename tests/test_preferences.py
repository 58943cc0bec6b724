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


def test_scored_positions_head_computes_what_trls_chunked_head_does():
    """fastpaths.ScoredPositionsLogProb against TRL's ChunkedLogProbFunction (its torch fallback): every
    output and the gradients of hidden and weight, with a temperature, a logit scale and soft-capping."""
    from trl.kernels import ChunkedLogProbFunction

    from star_lite.fastpaths import ScoredPositionsLogProb

    torch.manual_seed(0)
    hidden, weight = torch.randn(9, 16, dtype=torch.float64), torch.randn(300, 16, dtype=torch.float64)
    targets = torch.randint(0, 300, (9,))
    targets[0] = int((hidden[0] @ weight.T).argmax())  # one target that is the top token
    outputs = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
    results = {}
    for name, head in (("trl", ChunkedLogProbFunction), ("ours", ScoredPositionsLogProb)):
        h, w = hidden.clone().float().requires_grad_(), weight.clone().float().requires_grad_()
        out = head.apply(h, w, None, targets, 0.7, 128, 30.0, 0.5, outputs)
        (out[0].sum() + 0.3 * out[1].sum()).backward()
        results[name] = (out, h.grad, w.grad)
    (trl_out, trl_h, trl_w), (our_out, our_h, our_w) = results["trl"], results["ours"]
    for a, b in zip(our_out[:4], trl_out[:4]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.equal(our_out[4], trl_out[4]) and bool(our_out[4][0])
    torch.testing.assert_close(our_h, trl_h, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(our_w, trl_w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rl_autocast", ["off", "bfloat16"])
def test_dpo_with_the_scored_positions_head_trains_as_trls_head(tiny_model_dir, tmp_path, monkeypatch, rl_autocast):
    """train.lm_head=completion (auto on a CPU) gives TRL's DPO the scored positions alone, through
    ScoredPositionsLogProb: the same losses and adapter as TRL's own head, and TRL's head back after; in
    float32 and under bfloat16 autocast with the frozen base as a bfloat16 copy (train.rl_autocast)."""
    import trl.trainer.utils as trl_utils
    from trl.kernels import ChunkedLogProbFunction

    from star_lite import fastpaths

    calls = []
    original = fastpaths.ScoredPositionsLogProb.apply
    monkeypatch.setattr(fastpaths.ScoredPositionsLogProb, "apply",
                        staticmethod(lambda hidden, *a, **k: calls.append(hidden.shape[0]) or original(hidden, *a, **k)))
    results = {}
    runs = [("trl", rl_autocast), ("completion", rl_autocast)] + [("trl", "off")] * (rl_autocast != "off")
    for head, autocast in runs:
        cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path, model={"load_in_4bit": False},
                                         train={"lm_head": head, "rl_autocast": autocast}))
        tok = load_tokenizer(cfg.model.name_or_path)
        torch.manual_seed(0)
        policy = fresh_adapter(load_base_model(cfg.model), cfg.model)
        model, trained = train_dpo(policy, tok, _pairs(), cfg, tmp_path / f"{head}-{autocast}", steps=4,
                                   learning_rate=1e-2, batch_size=4, beta=0.1)
        results[head if autocast == rl_autocast else "float32"] = ([h["loss"] for h in trained.history],
                         {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n})
        assert trl_utils._ChunkedLogProbFunction is ChunkedLogProbFunction  # TRL's own head again after
    (trl_loss, trl_w), (own_loss, own_w) = results["trl"], results["completion"]
    close = {"off": 1e-4, "bfloat16": 1e-2}[rl_autocast]  # bfloat16: the same products, summed in another order
    assert len(trl_loss) == 4 and own_loss == pytest.approx(trl_loss, rel=close)
    if rl_autocast == "off":
        for k in trl_w:
            torch.testing.assert_close(own_w[k], trl_w[k], rtol=1e-3, atol=1e-5)
    else:  # AdamW turns a near-zero gradient's bfloat16 rounding into a step of +-lr: 4 steps under bfloat16
        # land about 0.1 from float32's adapter either way, so the scored-positions head must land no farther
        # from float32 than TRL's own head does under bfloat16
        exact = results["float32"][1]
        apart = {name: sum(float((w[k] - exact[k]).norm() ** 2) for k in exact) ** 0.5
                 for name, w in (("trl", trl_w), ("own", own_w))}
        assert apart["own"] <= 1.2 * apart["trl"], apart
    # only the scored positions reached the head (TRL on a CPU passes every position, prompt and padding too):
    # at most a batch of 4 pairs' chosen and rejected completions, EOS included
    longest = max(len(tok(p[k])["input_ids"]) for p in _pairs() for k in ("chosen", "rejected")) + 1
    assert calls and max(calls) <= 8 * longest


def test_verifier_scores_each_distinct_candidate_once_and_projects_only_completion_positions(tiny_model_dir,
                                                                                            tmp_path):
    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path, model={"load_in_4bit": False}))
    tok = load_tokenizer(cfg.model.name_or_path)
    base = load_base_model(cfg.model)
    start = fresh_adapter(base, cfg.model)
    with torch.no_grad():  # a verifier that differs from its reference
        for name, p in start.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    start.save_pretrained(str(tmp_path / "verifier"))
    base = detach_adapter(start)
    fresh_adapter(base, cfg.model).save_pretrained(str(tmp_path / "reference"))
    verifier = load_verifier(base, tmp_path / "verifier", tmp_path / "reference")
    pairs = _pairs()[:3]
    prompts = [p["prompt"] for p in pairs for _ in range(3)]  # every candidate drawn three times
    completions = [p[k] for p in pairs for k in ("chosen", "chosen", "rejected")]
    rows, positions = [], []  # rows through the model; positions through the LM head
    inner = verifier.get_base_model()
    hooks = [inner.model.register_forward_hook(lambda m, a, k, out: rows.append(k["input_ids"].shape[0]),
                                               with_kwargs=True),
             inner.lm_head.register_forward_hook(lambda m, a, out: positions.append(a[0].shape[-2]))]
    scores = verifier_scores(verifier, tok, prompts, completions, beta=0.1)
    for h in hooks:
        h.remove()
    assert sum(rows) == 2 * 6  # 6 distinct (prompt, completion) pairs, under the verifier and the reference
    completion_tokens = sum(len(tok(p + c)["input_ids"]) - len(tok(p)["input_ids"])
                            for p, c in dict.fromkeys(zip(prompts, completions)))
    assert sum(positions) == 2 * completion_tokens  # the LM head saw the completion positions only
    assert scores[0] == scores[1] and scores[0] != scores[2]
    one_each = verifier_scores(verifier, tok, prompts[::3] + prompts[2::3], completions[::3] + completions[2::3], 0.1)
    assert scores[0::3] + scores[2::3] == pytest.approx(one_each, rel=1e-5, abs=1e-6)
