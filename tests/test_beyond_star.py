"""dpo, v-star and adastar on a tiny random model: DPO's reference, the verifier's scores, AdaSTaR's choice."""

import csv

import pytest
import torch

from star_lite.config import from_dict
from star_lite.models import fresh_adapter, load_base_model, load_tokenizer
from star_lite.rl import sequence_logprobs, train_dpo
from star_lite.rundir import read_jsonl
from star_lite.stats import wilson

from conftest import tiny_config_dict


@pytest.fixture(scope="module")
def beyond_compare(tiny_model_dir, tmp_path_factory):
    from star_lite.cli import main
    import yaml

    out = tmp_path_factory.mktemp("beyond")
    data = tiny_config_dict(tiny_model_dir, out / "unused")
    data["compare"] = {"methods": ["dpo", "v-star", "adastar"], "output_dir": str(out), "seeds": [0],
                       "reference": "dpo"}
    data["dpo"] = {"samples_per_problem": 2, "steps": 2, "batch_size": 4}
    data["v_star"] = {"samples_per_problem": 2, "k": 3, "steps": 2, "batch_size": 4}
    data["adastar"] = {"sample_fraction": 0.5, "curriculum": False}
    cfg_path = out / "compare.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    assert main(["compare", str(cfg_path)]) == 0
    return out, from_dict(data)


def test_each_method_writes_its_stages_and_the_comparison_shows_them(beyond_compare):
    out, cfg = beyond_compare
    stages = {m: [(r["iteration"], r["stage"]) for r in read_jsonl(out / "seed_0" / m / "metrics.jsonl")]
              for m in cfg.compare.methods}
    assert stages["dpo"] == [(0, "few-shot"), (1, "dpo"), (2, "dpo")]
    assert stages["v-star"] == [(0, "few-shot"), (1, "star"), (2, "star"), (3, "verifier")]
    assert stages["adastar"] == [(0, "few-shot"), (1, "star"), (2, "star")]
    with open(out / "comparison.csv") as f:
        table = list(csv.DictReader(f))
    verifier = next(r for r in table if r["stage"] == "verifier")
    for key in ("best_of@3", "ci_low", "maj@3", "maj@3_ci_high", "greedy_accuracy", "greedy_accuracy_ci_low", "pass@3"):
        assert verifier[key] != "", key
    dpo = [r for r in read_jsonl(out / "seed_0" / "dpo" / "metrics.jsonl") if r["stage"] == "dpo"]
    assert all(r["num_pairs"] > 0 and r["trained_tokens"] > 0 and r["generated_tokens"] > 0 for r in dpo)
    assert all(r["dpo_loss"] is not None for r in dpo)
    # the pairs come from the SFT adapter DPO starts from (dpo.pairs_from: policy), and steps follow their number
    for r in dpo:
        it_dir = out / "seed_0" / "dpo" / f"iter_{r['iteration']:03d}"
        drawn = {(s["id"], s["completion"].strip()) for s in read_jsonl(it_dir / "policy_samples.jsonl")}
        pairs = read_jsonl(it_dir / "pairs.jsonl")
        assert r["pairs_from"] == "policy" and pairs and all((p["id"], p["chosen"].strip()) in drawn for p in pairs)
        assert r["dpo_steps"] == min(cfg.dpo.steps, -(-int(cfg.dpo.epochs * len(pairs)) // cfg.dpo.batch_size))


def test_dpo_rows_hold_the_accuracy_of_the_sft_adapter_dpo_started_from(beyond_compare):
    out, cfg = beyond_compare
    run = out / "seed_0" / "dpo"
    for r in read_jsonl(run / "metrics.jsonl")[1:]:
        sft = read_jsonl(run / f"iter_{r['iteration']:03d}" / "sft_eval.jsonl")
        dpo = read_jsonl(run / f"iter_{r['iteration']:03d}" / "eval.jsonl")
        assert [x["id"] for x in sft] == [x["id"] for x in dpo] and len(sft) == cfg.task.num_test  # paired
        assert r["sft_accuracy"] == sum(x["correct"] for x in sft) / len(sft)
    rows = list(csv.DictReader(open(out / "comparison.csv")))
    assert all(row["sft_accuracy"] for row in rows if row["method"] == "dpo" and row["iteration"] != "0")


def test_v_star_reports_best_of_k_majority_and_greedy_on_the_same_candidates(beyond_compare):
    out, cfg = beyond_compare
    run = out / "seed_0" / "v-star"
    row = read_jsonl(run / "metrics.jsonl")[-1]
    candidates = read_jsonl(run / "iter_003" / "candidates.jsonl")
    chosen = read_jsonl(run / "iter_003" / "eval.jsonl")
    assert len(candidates) == cfg.v_star.k * cfg.task.num_test and len(chosen) == cfg.task.num_test
    for c in chosen:  # the verifier's pick is the top-scored of that problem's k candidates
        mine = [x for x in candidates if x["id"] == c["id"]]
        assert c["verifier_score"] == max(x["verifier_score"] for x in mine)
    assert row["accuracy"] == row["best_of@3"] == sum(c["correct"] for c in chosen) / len(chosen)
    greedy = read_jsonl(run / "iter_002" / "eval.jsonl")
    assert row["greedy_accuracy"] == sum(r["correct"] for r in greedy) / len(greedy)
    n_maj = round(row["maj@3"] * cfg.task.num_test)
    assert (row["maj@3_ci_low"], row["maj@3_ci_high"]) == pytest.approx(wilson(n_maj, cfg.task.num_test))
    # the verifier learned from every generator iteration's samples, not the last one's alone
    pairs = read_jsonl(run / "iter_003" / "pairs.jsonl")
    sampled = {(s["id"], s["completion"]) for it in (1, 2) for s in read_jsonl(run / f"iter_{it:03d}" / "samples.jsonl")}
    assert pairs and all((p["id"], p["chosen"].strip()) in {(i, c.strip()) for i, c in sampled} for p in pairs)
    assert (run / "iter_003" / "verifier" / "adapter_model.safetensors").exists()


def test_adastar_samples_the_unseen_problems_next_and_keeps_the_others_rationales(beyond_compare):
    out, cfg = beyond_compare
    run = out / "seed_0" / "adastar"
    ids = [{s["id"] for s in read_jsonl(run / f"iter_{it:03d}" / "samples.jsonl")} for it in (1, 2)]
    assert len(ids[0]) == len(ids[1]) == cfg.task.num_train // 2
    assert not ids[0] & ids[1]  # never-sampled problems come before those sampled and not solved
    first, second = (read_jsonl(run / f"iter_{it:03d}" / "train.jsonl") for it in (1, 2))
    carried = [k for k in second if k.get("carried")]
    assert carried and {k["id"] for k in carried} <= ids[0]
    assert [(k["id"], k["completion"]) for k in carried] == [(k["id"], k["completion"]) for k in first]
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r.get("num_sampled_problems") for r in rows[1:]] == [8, 8]
    star_tokens = sum(s["tokens"] for s in read_jsonl(run / "iter_001" / "samples.jsonl"))
    assert rows[1]["generated_tokens"] == star_tokens


def _far_adapter(base, cfg, path):
    torch.manual_seed(1)
    model = fresh_adapter(base, cfg.model)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 2.0)  # an SFT adapter far from the base
    model.save_pretrained(str(path))
    return model.unload()


@pytest.mark.parametrize("policy_init", ["sft", "base"])
def test_dpo_reference_is_the_sft_adapter_whatever_the_policy_starts_from(policy_init, tiny_model_dir, tmp_path):
    from peft import PeftModel

    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path, train={"logging_steps": 1}))
    tok = load_tokenizer(cfg.model.name_or_path)
    base = _far_adapter(load_base_model(cfg.model), cfg, tmp_path / "sft")
    policy = (PeftModel.from_pretrained(base, str(tmp_path / "sft"), is_trainable=True) if policy_init == "sft"
              else fresh_adapter(base, cfg.model))
    pairs = [{"prompt": "Q: What is 1 + 2?\nA:", "chosen": " 1 + 2 = 3. The answer is 3.",
              "rejected": " 1 + 2 = 4. The answer is 4."}] * 4
    model, trained = train_dpo(policy, tok, pairs, cfg, tmp_path, steps=1, learning_rate=1e-3, batch_size=4,
                               beta=0.1, reference=tmp_path / "sft")
    first = trained.history[0]
    # at the first step the policy is its starting point: equal to the reference only when it starts from it
    if policy_init == "sft":
        assert abs(first["rewards/chosen"]) < 5e-3 and abs(first["rewards/rejected"]) < 5e-3  # bf16 round trip
    else:
        assert abs(first["rewards/chosen"]) > 5e-2, first
    assert list(model.peft_config) == ["default"] and (tmp_path / "adapter").exists()


def test_sequence_logprobs_scores_the_completion_alone_whatever_the_padding(tiny_model_dir, tmp_path):
    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path))
    tok = load_tokenizer(cfg.model.name_or_path)
    model = load_base_model(cfg.model)
    prompts, completions = ["Q: What is 1 + 2?\nA:", "Q: 3?\nA:"], [" The answer is 3.", " It is 3, the answer is 3."]
    batched = sequence_logprobs(model, tok, prompts, completions)
    for p, c, got in zip(prompts, completions, batched):
        ids = tok(p + c, return_tensors="pt")["input_ids"]
        start = len(tok(p)["input_ids"])
        with torch.no_grad():
            logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        want = logps[torch.arange(start - 1, ids.shape[1] - 1), ids[0, start:]].sum().item()
        assert got == pytest.approx(want, abs=1e-3)
    # an empty prompt: the completion's first token is given, the rest are scored
    ids = tok(completions[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    want = logps[torch.arange(0, ids.shape[1] - 1), ids[0, 1:]].sum().item()
    assert sequence_logprobs(model, tok, ["", prompts[0]], completions)[0] == pytest.approx(want, abs=1e-3)


@pytest.mark.parametrize("override, field", [("dpo.policy_init=ref", "dpo.policy_init"),
                                             ("adastar.sample_fraction=0", "adastar.sample_fraction"),
                                             ("v_star.samples_per_problem=1", "v_star.samples_per_problem"),
                                             ("dpo.beta=0", "dpo.beta")])
def test_bad_values_of_the_new_sections_name_their_field(override, field):
    from star_lite.config import ConfigError

    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        from_dict({}, [override])


def test_a_finished_v_star_run_continues_as_finished_whenever_its_generator_stopped(beyond_compare):
    # the generator may stop before star.iterations (budget, validation) and the verifier takes the next
    # iteration; continuing the run (a re-run comparison) must not mistake that stage for a generator's.
    # Here: the finished run continued with one generator iteration more than it ran (2 + verifier)
    from star_lite.compare import seed_config
    from star_lite.methods import run_method

    out, cfg = beyond_compare
    run = out / "seed_0" / "v-star"
    before = read_jsonl(run / "metrics.jsonl")
    scfg = seed_config(cfg, 0)
    scfg.star.iterations = 3
    assert run_method(scfg, "v-star") == before == read_jsonl(run / "metrics.jsonl")
