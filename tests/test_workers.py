"""compare.workers: (seed, method) jobs on worker processes, longest first, waiting for what they copy."""

import concurrent.futures as cf
import os
import threading
import time

import pytest
import yaml

from star_lite.rundir import read_jsonl
from star_lite.workers import JobsFailed, auto_workers, choose_workers, run_jobs

from conftest import tiny_config_dict


def _threads_pool(jobs, needs, cost, workers, work):
    """run_jobs on a thread pool; returns each job's (start, end) and the most that ran at once."""
    spans, lock, running, most = {}, threading.Lock(), [0], [0]

    def job(j):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        spans[j] = [time.monotonic(), None]
        try:
            work(j)
        finally:
            spans[j][1] = time.monotonic()
            with lock:
                running[0] -= 1

    with cf.ThreadPoolExecutor(workers) as pool:
        run_jobs(jobs, needs, cost, workers, lambda j: pool.submit(job, j))
    return spans, most[0]


def test_longest_ready_job_first_and_no_job_before_what_it_needs():
    cost = {"base": 1, "short": 1, "long": 5, "sft": 2, "rl": 4}
    jobs = list(cost)
    needs = {j: ["base"] for j in jobs if j != "base"} | {"rl": ["base", "sft"]}
    spans, most = _threads_pool(jobs, needs, cost.get, 2, lambda j: time.sleep(0.05 * cost[j]))
    assert most == 2
    for j, before in needs.items():
        for n in before:
            assert spans[n][1] <= spans[j][0], (n, j)  # what a job copies is finished before it starts
    starts = sorted(jobs, key=lambda j: spans[j][0])
    # after base: sft (2, but rl's 4 waits on it: chain 6) and long (5) start, short last
    assert starts[0] == "base" and set(starts[1:3]) == {"sft", "long"} and starts[-1] == "short"


def test_a_failed_job_skips_what_needs_it_and_the_others_finish():
    jobs = ["a", "b", "c", "d"]
    ran = []

    def work(j):
        if j == "b":
            raise ValueError("broken on purpose")
        ran.append(j)

    with cf.ThreadPoolExecutor(2) as pool:
        with pytest.raises(JobsFailed) as e:
            run_jobs(jobs, {"c": ["b"]}, lambda j: 1, 2, lambda j: pool.submit(work, j))
    assert sorted(ran) == ["a", "d"]
    assert set(e.value.failed) == {"b", "c"}
    assert "broken on purpose" in e.value.failed["b"] and "b failed" in e.value.failed["c"]


def test_auto_workers_follow_cores_jobs_memory_and_the_device(monkeypatch):
    assert auto_workers(30, 2, 24.0, False) == 2
    assert auto_workers(30, 16, 13.0, False) == 2  # 6 GB each
    assert auto_workers(1, 2, 24.0, False) == 1
    assert auto_workers(30, 8, 100.0, True) == 1  # one GPU: one job at a time
    monkeypatch.setenv("STAR_LITE_COMPARE_WORKERS", "3")
    assert choose_workers(0, 30, "cpu") == (3, "STAR_LITE_COMPARE_WORKERS")
    assert choose_workers(2, 30, "cpu") == (2, "compare.workers")
    assert choose_workers(4, 2, "cpu")[0] == 2  # never more workers than jobs
    monkeypatch.delenv("STAR_LITE_COMPARE_WORKERS")
    monkeypatch.setattr("star_lite.threads.usable_cores", lambda: 2)
    monkeypatch.setattr("star_lite.workers.available_memory_gb", lambda: 24.0)
    monkeypatch.setattr("star_lite.threads.live_processes", lambda: [os.getpid()])  # this process: not another
    assert choose_workers(0, 30, "cpu") == (2, "auto: 2 cores, 30 jobs, 24 GB available")
    monkeypatch.setattr("star_lite.threads.live_processes", lambda: [os.getpid(), os.getpid() + 1])
    assert choose_workers(0, 30, "cpu") == (1, "auto: 2 cores, 1 other star_lite process, 30 jobs, 24 GB available")
    monkeypatch.setattr("star_lite.distributed.world_size", lambda: 2)  # accelerate launch: before the setting
    assert choose_workers(2, 30, "cpu")[0] == 1 and choose_workers(0, 30, "cpu")[0] == 1


def test_a_chain_of_skipped_jobs_and_jobs_waiting_on_each_other_are_all_named():
    ran = []

    def work(j):
        if j == "a":
            raise ValueError("broken on purpose")
        ran.append(j)

    with cf.ThreadPoolExecutor(2) as pool:
        with pytest.raises(JobsFailed) as e:
            run_jobs(list("abcxyz"), {"b": ["a"], "c": ["b"], "x": ["y"], "y": ["x"]}, lambda j: 1, 2,
                     lambda j: pool.submit(work, j))
    assert ran == ["z"]
    assert set(e.value.failed) == set("abcxy")
    assert "b failed" in e.value.failed["c"] and "waits for y" in e.value.failed["x"]
    with pytest.raises(JobsFailed) as e:  # one slot, nothing else running: the whole chain at once
        run_jobs(list("abc"), {"b": ["a"], "c": ["b"]}, lambda j: 1, 1, lambda j: work(j))
    assert "b failed" in e.value.failed["c"]


@pytest.mark.parametrize("methods, grpo_init, source", [
    (["few-shot", "star-no-rationalization", "grpo"], "sft", "few-shot"),
    (["grpo", "star-no-rationalization", "star"], "sft", "star-no-rationalization"),  # never grpo: it waits
    (["grpo", "star-no-rationalization", "star"], "base", "grpo"),
    (["v-star", "star", "sft-direct"], "sft", "sft-direct")])  # the shortest, not the first listed
def test_job_needs_every_job_runs_after_what_it_copies(methods, grpo_init, source, tmp_path):
    from star_lite.compare import job_needs
    from star_lite.config import from_dict

    data = tiny_config_dict(tmp_path, tmp_path / "unused", rl={"grpo_init": grpo_init})
    data["compare"] = {"methods": methods, "output_dir": str(tmp_path), "seeds": [0, 1]}
    cfg = from_dict(data)
    jobs = [(seed, m) for seed in (0, 1) for m in methods]
    needs = job_needs(cfg, jobs)
    done = []
    with cf.ThreadPoolExecutor(2) as pool:
        run_jobs(jobs, needs, lambda j: 1, 2, lambda j: pool.submit(done.append, j))
    assert sorted(done) == sorted(jobs)  # no job waits on one that waits on it
    first = [j for j in jobs if not needs[j]]
    assert len(first) == 1 and all(first[0] in needs[j] for j in jobs if j != first[0])  # one iteration 0 source
    # the shortest method evaluates the base: every other job waits for that whole job
    assert first[0] == (0, source)
    if "grpo" in methods:
        assert ((1, "star-no-rationalization") in needs[(1, "grpo")]) == (grpo_init == "sft")


def test_two_worker_processes_give_the_runs_one_process_gives(tiny_model_dir, tmp_path):
    from star_lite.cli import main

    results = {}
    for workers in (1, 2):
        out = tmp_path / f"workers_{workers}"
        data = tiny_config_dict(tiny_model_dir, out / "unused", star={"iterations": 1}, run={"threads": 1})
        data["compare"] = {"methods": ["few-shot", "sft-direct", "star"], "output_dir": str(out), "seeds": [0, 1],
                           "workers": workers}
        path = tmp_path / f"compare_{workers}.yaml"
        path.write_text(yaml.safe_dump(data))
        assert main(["compare", str(path)]) == 0
        results[workers] = {str(p.relative_to(out)): read_jsonl(p) for p in sorted(out.glob("seed_*/*/iter_*/eval.jsonl"))}
        rows = {str(p.relative_to(out)): read_jsonl(p) for p in sorted(out.glob("seed_*/*/metrics.jsonl"))}
        # the few-shot base is evaluated once and copied into every other run, in the pool too
        evaluated = [k for k, r in rows.items() if not r[0].get("shared_from")]
        assert evaluated == ["seed_0/few-shot/metrics.jsonl"], evaluated
        assert (out / "comparison.md").exists()
    assert len(results[1]) == 10 and results[2] == results[1]
