"""compare.reuse: work two methods compute alike is computed once, and the methods' results stay bit for bit
what they compute on their own."""

from pathlib import Path

import pytest
import torch
import yaml

from star_lite.rundir import read_jsonl

from conftest import tiny_config_dict


def _files(run: Path) -> dict[str, bytes]:
    """Everything a method's run directory holds that its computation decides (not timings, not logs)."""
    kept = (".jsonl", ".safetensors")
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.suffix in kept and p.name != "metrics.jsonl"}


def _rows(run: Path) -> list[dict]:
    timing = ("seconds", "peak_memory_mb", "shared_from")
    return [{k: v for k, v in r.items() if not k.startswith(timing)} for r in read_jsonl(run / "metrics.jsonl")]


def test_v_star_and_dpo_reuse_rest_em_and_compute_what_they_compute_alone(tiny_model_dir, tmp_path):
    """rest-em's iterations are v-star's generator and dpo's first samples and SFT (same draws, settings and
    seed): with reuse they come from the store, and every sample, pair, candidate, adapter and metric of v-star
    and dpo is what they compute with reuse off (the random state after a reused call included: dpo's pairs
    and v-star's candidates are drawn after it)."""
    from star_lite import reuse as store
    from star_lite.cli import main

    outs, hits = {}, {}
    for reuse in ("auto", "off"):
        out = tmp_path / reuse
        # 8 steps: at least one pass over the at most 2 x 16 kept examples, so rest-em trains as many steps as
        # the STaR schedule gives v-star (in the comparison's config too)
        # threads 1: the thread count is in the key, and auto threads follow other star_lite processes
        data = tiny_config_dict(tiny_model_dir, out / "unused", train={"start_steps": 8},
                                model={"load_in_4bit": False},  # reuse: auto is off on a 4-bit base
                                run={"threads": 1},
                                rest_em={"samples_per_problem": 2, "temperature": 0.7, "max_kept_per_problem": 10},
                                dpo={"samples_per_problem": 2, "temperature": 0.7},
                                v_star={"samples_per_problem": 2, "temperature": 0.7, "k": 2})
        data["compare"] = {"methods": ["rest-em", "dpo", "v-star"], "output_dir": str(out), "seeds": [0],
                           "reference": "rest-em", "reuse": reuse}
        path = tmp_path / f"compare_{reuse}.yaml"
        path.write_text(yaml.safe_dump(data))
        before = dict(store.hits)
        assert main(["compare", str(path)]) == 0
        hits[reuse] = {k: store.hits[k] - before[k] for k in before}
        outs[reuse] = out / "seed_0"
    for method in ("rest-em", "dpo", "v-star"):
        on, off = outs["auto"] / method, outs["off"] / method
        assert _files(on) == _files(off), method
        assert _rows(on) == _rows(off), method
    reused = {m: sum(r.get("seconds_reused", 0) for r in read_jsonl(outs["auto"] / m / "metrics.jsonl"))
              for m in ("rest-em", "dpo", "v-star")}
    assert reused["rest-em"] == 0 and reused["dpo"] > 0 and reused["v-star"] > 0, reused
    v_star = [r for r in read_jsonl(outs["auto"] / "v-star" / "metrics.jsonl") if r.get("stage") == "star"]
    assert all(r.get("seconds_reused") for r in v_star)  # every generator iteration came from rest-em's
    assert not any(r.get("seconds_reused") for r in read_jsonl(outs["off"] / "v-star" / "metrics.jsonl"))
    assert "reused" in (outs["auto"].parent / "comparison.md").read_text()
    # SFT too: v-star's two generator iterations and dpo's first; with reuse off, nothing
    assert hits["auto"]["sft"] >= 3 and hits["auto"]["generate"] >= 4 and hits["off"] == {"generate": 0, "sft": 0}


def test_a_stored_call_stopped_by_its_callback_replays_the_stop_and_continues_where_it_was_not(
        tiny_model_dir, tmp_path):
    """A sampling call stopped after its first batch (the budget) is stored unfinished. The same call stopped
    at the same batch replays the stop; one not stopped goes on from the stored random state and gives the
    generations, and leaves the random state, of one uninterrupted call."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from star_lite import reuse
    from star_lite.config import from_dict
    from star_lite.sampling import generator

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path / "run"))
    prompts = ["Q: 1 + 2\nA:", "Q: 33 + 4\nA:", "Q: 5 + 16\nA: so", "Q: 7\nA:", "Q: 8 + 9 + 10\nA:"]
    kwargs = dict(batch_size=2, max_new_tokens=6, temperature=1.0, top_p=1.0, stop_strings=["\n\n"])

    class Stop(Exception):
        pass

    def stop_after_first(idx, batch):
        raise Stop

    torch.manual_seed(1)
    whole = generator(cfg)(model, tok, prompts, **kwargs)  # no store: the plain computation
    after = torch.get_rng_state()
    with reuse.active(tmp_path / "store"):
        for attempt in range(2):  # stored unfinished, then replayed: stopped at the same batch both times
            torch.manual_seed(1)
            seen = []
            with pytest.raises(Stop):
                generator(cfg)(model, tok, prompts, on_batch=lambda i, b: (seen.append(list(i)), stop_after_first(i, b)),
                               **kwargs)
            assert len(seen) == 1
        assert "seconds_reused" in reuse.take()  # the replay counted what the stored batch cost
        torch.manual_seed(1)
        batches = []
        again = generator(cfg)(model, tok, prompts, on_batch=lambda i, b: batches.append(list(i)), **kwargs)
        assert again == whole and torch.equal(torch.get_rng_state(), after)
        assert sorted(i for b in batches for i in b) == list(range(len(prompts)))  # every batch reached the callback
        torch.manual_seed(1)
        assert generator(cfg)(model, tok, prompts, **kwargs) == whole  # now stored whole
        assert torch.equal(torch.get_rng_state(), after)
        torch.manual_seed(2)  # another draw is another key
        assert generator(cfg)(model, tok, prompts, **kwargs) != whole
    assert len(list((tmp_path / "store").glob("*.pt"))) == 2


def test_in_a_pool_each_method_starts_after_the_run_whose_work_it_reuses(tmp_path):
    """compare_reasoning's methods under compare.reuse: v-star and dpo start after rest-em, star after
    star-no-rationalization, and all jobs run; a failed source does not skip them (they can compute the work
    themselves); nothing extra where reuse is off, a method draws otherwise than its source, or the base is
    4-bit."""
    import concurrent.futures as cf
    import time

    from star_lite.compare import job_after, job_needs
    from star_lite.config import load_config
    from star_lite.workers import JobsFailed, run_jobs

    path = Path(__file__).parents[1] / "configs" / "compare_reasoning.yaml"
    cfg = load_config(path, overrides=[f"compare.output_dir={tmp_path}"])
    jobs = [(s, m) for s in cfg.compare.seeds for m in cfg.compare.methods]
    needs, after = job_needs(cfg, jobs), job_after(cfg, jobs)
    for seed in cfg.compare.seeds:
        assert after[(seed, "v-star")] == after[(seed, "dpo")] == [(seed, "rest-em")]
        assert after[(seed, "star")] == [(seed, "star-no-rationalization")]
    spans = {}

    def work(job):
        spans[job] = [time.monotonic(), None]
        if job == (1, "rest-em"):
            spans[job][1] = time.monotonic()
            raise ValueError("broken on purpose")
        time.sleep(0.01)
        spans[job][1] = time.monotonic()

    with cf.ThreadPoolExecutor(2) as pool:
        with pytest.raises(JobsFailed) as e:
            run_jobs(jobs, needs, lambda j: 1, 2, lambda j: pool.submit(work, j), after=after)
    assert list(e.value.failed) == [str((1, "rest-em"))]  # only the source itself
    assert set(spans) == set(jobs)  # everything else ran, v-star and dpo of seed 1 too
    for job, sources in after.items():
        for source in sources:
            assert spans[source][1] <= spans[job][0], (source, job)
    for overrides, star_waits in ((["compare.reuse=off"], False),
                                  (["v_star.temperature=1.0", "dpo.samples_per_problem=2"], True),
                                  (["model.load_in_4bit=true"], False)):
        other = load_config(path, overrides=[f"compare.output_dir={tmp_path}", *overrides])
        after = job_after(other, jobs)
        assert not after[(0, "v-star")] and not after[(0, "dpo")], overrides
        assert bool(after[(0, "star")]) == star_waits, overrides


def test_a_model_has_one_fingerprint_in_every_process(tmp_path):
    """Pool workers are spawned, each with its own string hash seed, which orders a set (peft's
    target_modules): an adapter's fingerprint must not follow it, or nothing reuses across workers."""
    import os
    import subprocess
    import sys

    script = (
        "import torch\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "from peft import LoraConfig, get_peft_model\n"
        "from star_lite.reuse import fingerprint\n"
        "torch.manual_seed(0)\n"
        "m = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,"
        " num_attention_heads=2))\n"
        "m = get_peft_model(m, LoraConfig(r=2, target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj', 'up_proj']))\n"
        "print(fingerprint(m))\n")
    prints = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip().splitlines()[-1]
              for seed in ("1", "2", "3")}
    assert len(prints) == 1, prints


def test_a_reused_sft_sets_the_weights_and_dtypes_training_left_in_memory(tiny_model_dir, tmp_path, monkeypatch):
    """Where the saved adapter file rounds the trained weights (kept in the store then), or loads them in
    another dtype, a reused SFT still hands over the adapter as training left it in memory, with the
    random state after training; a run on other examples is not reused."""
    from star_lite import reuse
    from star_lite.config import from_dict
    from star_lite.models import detach_adapter, load_base_model, load_tokenizer
    from star_lite.trainers.sft import train_adapter

    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path / "run", model={"load_in_4bit": False}))
    tokenizer, base = load_tokenizer(str(tiny_model_dir)), load_base_model(cfg.model)
    examples = [{"prompt": f"Q: {i} + 1\nA:", "completion": f" {i + 1}."} for i in range(8)]

    def lora(model):
        return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}

    monkeypatch.setattr(reuse, "_reloads_exactly", lambda model, adapter: False)  # as a rounding file would
    with reuse.active(tmp_path / "store"):
        model, first = train_adapter(base, tokenizer, examples, cfg, 3, tmp_path / "a", seed=1)
        trained, after = lora(model), torch.get_rng_state()
        base = detach_adapter(model)
        entry = next((tmp_path / "store").glob("sft-*.pt"))
        stored = torch.load(entry, weights_only=False)
        assert stored["weights"] is not None
        stored["weights"] = {n: w + 1.0 for n, w in stored["weights"].items()}  # tell the copy from the file
        stored["dtypes"] = {n: "torch.float64" for n in stored["dtypes"]}
        torch.save(stored, entry)
        torch.manual_seed(123)
        hits = reuse.hits["sft"]
        model, second = train_adapter(base, tokenizer, examples, cfg, 3, tmp_path / "b", seed=1)
        assert reuse.hits["sft"] == hits + 1 and second == first
        assert torch.equal(torch.get_rng_state(), after)
        got = lora(model)
        assert all(torch.equal(got[n], trained[n] + 1.0) for n in trained)  # the store's weights, not the file's
        base = detach_adapter(model)
        stored["weights"] = None
        torch.save(stored, entry)
        model, _ = train_adapter(base, tokenizer, examples, cfg, 3, tmp_path / "c", seed=1)
        assert all(p.dtype == torch.float64 for n, p in model.named_parameters() if "lora_" in n)
        assert all(torch.equal(lora(model)[n], trained[n].double()) for n in trained)  # the file's, in its dtype
        base = detach_adapter(model)
        model, _ = train_adapter(base, tokenizer, examples[:4], cfg, 3, tmp_path / "d", seed=1)
        assert reuse.hits["sft"] == hits + 2  # other examples: trained
