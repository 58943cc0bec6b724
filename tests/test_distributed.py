"""More than one process: sharding and gathering in prompt order, and one 2-process run under
``accelerate launch`` (gloo on the CPU) against a one-process run."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from star_lite import distributed
from star_lite.budget import BudgetExhausted
from star_lite.rundir import read_jsonl
from star_lite.sampling import Generation
from star_lite.sampling.sharded import shard, sharded

from conftest import tiny_config_dict


def test_shards_cover_every_index_once_in_rank_order():
    for world in (1, 2, 3, 4):
        for n in range(12):
            blocks = [list(shard(n, r, world)) for r in range(world)]
            assert [i for b in blocks for i in b] == list(range(n))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


class FakeProcesses:
    """``world`` threads standing in for processes: rank per thread, all_gather through a barrier."""

    def __init__(self, monkeypatch, world: int):
        self.world, self.local = world, threading.local()
        self.barrier, self.slots = threading.Barrier(world, timeout=10), [None] * world
        monkeypatch.setattr(distributed, "rank", lambda: self.local.rank)
        monkeypatch.setattr(distributed, "is_main", lambda: self.local.rank == 0)
        monkeypatch.setattr(distributed, "gather", self.gather)

    def gather(self, obj):
        self.barrier.wait()
        self.slots[self.local.rank] = obj
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()
        return out

    def run(self, fn):
        results, errors = [None] * self.world, [None] * self.world

        def target(r):
            self.local.rank = r
            try:
                results[r] = fn(r)
            except Exception as err:
                errors[r] = err

        threads = [threading.Thread(target=target, args=(r,), daemon=True) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads), "a process was left waiting"
        return results, errors


def echo_backend(calls):
    def generate(model, tokenizer, prompts, **kwargs):
        calls.append(list(prompts))
        return [Generation(p.upper(), len(p)) for p in prompts]

    return generate


def test_sharded_sampling_splits_the_prompts_and_gathers_them_in_prompt_order(monkeypatch):
    procs = FakeProcesses(monkeypatch, 2)
    prompts = [f"q{'x' * (i % 4)}{i}" for i in range(11)]
    calls, seen = [], [[], []]

    def run(rank):
        generate = sharded(lambda: echo_backend(calls), per_process=2)
        return generate(None, None, prompts, on_batch=lambda idx, gens: seen[rank].append((idx, gens)))

    results, errors = procs.run(run)
    assert errors == [None, None]
    expected = [Generation(p.upper(), len(p)) for p in prompts]
    assert results[0] == results[1] == expected
    sampled = sorted(p for call in calls for p in call)
    assert sampled == sorted(prompts)  # every prompt once, by one process
    for batches in seen:  # every process saw every round, each in its prompts' order
        assert sorted(i for idx, _ in batches for i in idx) == list(range(11))
        assert all(gens == [expected[i] for i in idx] for idx, gens in batches)


def test_a_budget_cut_in_one_process_stops_every_process_after_the_same_round(monkeypatch):
    procs = FakeProcesses(monkeypatch, 2)
    rounds = [[], []]

    def run(rank):
        def on_batch(idx, gens):
            rounds[rank].append(idx)
            if rank == 1 and len(rounds[rank]) == 2:  # only this process's clock has crossed
                raise BudgetExhausted("60s of 60s")

        sharded(lambda: echo_backend([]), per_process=2)(None, None, [str(i) for i in range(20)], on_batch=on_batch)

    _, errors = procs.run(run)
    assert all(isinstance(e, BudgetExhausted) for e in errors)
    assert len(rounds[0]) == len(rounds[1]) == 2


# --- one run under accelerate launch ------------------------------------------------------------

WORKTREE = Path(__file__).resolve().parents[1]


def _launch(cfg_path: Path) -> subprocess.Popen:
    # --multi_gpu starts one process per --num_processes through torchrun; without a GPU each one
    # runs on the CPU with gloo (accelerate launch --cpu starts a single process unless MPI is set up)
    env = dict(os.environ, PYTHONPATH=f"{WORKTREE}{os.pathsep}{Path(__file__).parent}", STAR_LITE_PROGRESS="0",
               OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           "0", "-m", "star_lite", "run", str(cfg_path)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_two_processes_sample_like_one_train_together_and_resume_after_a_kill(tiny_model_dir, tmp_path):
    from star_lite import run
    from star_lite.config import from_dict

    def config(out: Path) -> Path:
        data = tiny_config_dict(tiny_model_dir, out, model={"load_in_4bit": False}, star={"iterations": 1},
                                task={"num_train": 24})
        path = tmp_path / f"{out.name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    one = tmp_path / "one"
    run(from_dict(yaml.safe_load(config(one).read_text())))

    two = tmp_path / "two"
    proc = _launch(config(two))
    partial = two / "iter_001" / "samples.partial.jsonl"
    end = time.time() + 300
    while time.time() < end and proc.poll() is None and not (partial.exists() and read_jsonl(partial)):
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both processes, mid-sampling
    proc.wait()
    assert not (two / "iter_001" / "samples.jsonl").exists()

    proc = _launch(config(two))
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
    rows = read_jsonl(two / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [0, 1]  # no row twice
    assert all(r["world_size"] == 2 for r in rows)
    assert rows[1]["train_world_size"] == 2  # both processes trained (data-parallel)

    def content(path, keys):
        return [{k: r[k] for k in keys} for r in read_jsonl(path)]

    sample_keys = ("id", "sample", "phase", "completion", "correct", "tokens")
    samples = content(two / "iter_001" / "samples.jsonl", sample_keys)
    assert len({(s["id"], s["sample"], s["phase"]) for s in samples}) == len(samples)  # none twice
    assert samples == content(one / "iter_001" / "samples.jsonl", sample_keys)  # greedy: as one process
    eval_keys = ("id", "completion", "correct")
    assert content(two / "iter_000" / "eval.jsonl", eval_keys) == content(one / "iter_000" / "eval.jsonl", eval_keys)
    assert read_jsonl(one / "metrics.jsonl")[0]["world_size"] == 1
    # the loss is per token over both processes' batches, not divided by the process count again
    # (a random model's loss is about ln(vocabulary) whatever the batch: a halved loss is the bug)
    ratio = rows[1]["train_loss"] / read_jsonl(one / "metrics.jsonl")[1]["train_loss"]
    assert 0.8 < ratio < 1.25, ratio


def test_shipped_accelerate_configs_are_what_the_scale_out_doc_says():
    configs = WORKTREE / "configs" / "accelerate"
    ddp = yaml.safe_load((configs / "multi_gpu.yaml").read_text())
    fsdp = yaml.safe_load((configs / "fsdp_qlora.yaml").read_text())
    assert ddp["distributed_type"] == "MULTI_GPU" and fsdp["distributed_type"] == "FSDP"
    # the peft / bitsandbytes FSDP-QLoRA requirements
    assert fsdp["fsdp_config"]["fsdp_use_orig_params"] is False
    assert fsdp["fsdp_config"]["fsdp_cpu_ram_efficient_loading"] is True
    assert fsdp["fsdp_config"]["fsdp_sync_module_states"] is True


def test_under_fsdp_the_4bit_weights_are_stored_in_the_compute_dtype(monkeypatch):
    import torch

    from star_lite.config import ModelConfig
    from star_lite.models import bnb_config, quantized_placement

    assert quantized_placement("cpu") == {"device_map": {"": "cpu"}}
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert bnb_config(ModelConfig(compute_dtype="bfloat16"), "cpu").bnb_4bit_quant_storage == torch.bfloat16
    assert quantized_placement("cuda") == {}  # FSDP places the shards
