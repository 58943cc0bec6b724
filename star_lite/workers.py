"""A comparison's (seed, method) jobs on several worker processes, longest first (``compare.workers``).

One process per seed leaves a core idle whenever one seed's methods take longer than another's, and
three processes on two cores slow each other (docs/comparison.md, "Seeds side by side"). A pool of as
many workers as cores, each taking the longest job still waiting whose inputs are ready, keeps every
core busy to the end. Two jobs wait for another: every method waits for the job that evaluates the
few-shot base, few-shot's or else the shortest method's (its iteration 0 is copied, not computed again),
grpo waits for star-no-rationalization of its seed (its SFT start is copied from that run's first
iteration). Under compare.reuse v-star and dpo also start after rest-em and star after
star-no-rationalization of their seed, finished or failed (reuse.py hands them the work those runs computed
alike; without it they compute it themselves).

>>> jobs = [(0, "few-shot"), (0, "star"), (0, "v-star"), (1, "star")]
>>> order = []
>>> _ = run_jobs(jobs, {j: [(0, "few-shot")] for j in jobs[1:]}, job_cost, 1, lambda j: order.append(j))
>>> order
[(0, 'few-shot'), (0, 'v-star'), (0, 'star'), (1, 'star')]
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import time
from pathlib import Path
from typing import Any, Callable, Hashable

# seconds per seed of each built-in method's job on one core (configs/compare_reasoning.yaml, docs/comparison.md
# "Time by phase"; grpo without its shared SFT start): only the order matters, longest first
METHOD_COST = {"few-shot": 37, "sft-direct": 267, "star": 544, "star-no-rationalization": 516, "rest-em": 365,
               "self-motivated": 592, "grpo": 351, "dpo": 347, "v-star": 1021, "adastar": 350}
MEMORY_PER_WORKER_GB = 6  # a compare_reasoning method's peak resident memory was 5.8 GB


def job_cost(job: tuple[int, str]) -> float:
    """How long a (seed, method) job is expected to take, for ordering; a user's own method: the median."""
    return METHOD_COST.get(job[1], sorted(METHOD_COST.values())[len(METHOD_COST) // 2])


def available_memory_gb() -> float | None:
    """MemAvailable of /proc/meminfo in GB, None where there is none."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def auto_workers(jobs: int, cores: int, memory_gb: float | None, on_gpu: bool) -> int:
    """``compare.workers: 0``: one on a GPU (one device), else one per core, per job and per 6 GB of memory.

    >>> auto_workers(28, 2, 24.0, False), auto_workers(28, 16, 24.0, False), auto_workers(1, 2, 24.0, False)
    (2, 4, 1)
    >>> auto_workers(28, 16, 100.0, True), auto_workers(28, 2, 3.0, False)
    (1, 1)
    """
    if on_gpu:
        return 1
    by_memory = int(memory_gb // MEMORY_PER_WORKER_GB) if memory_gb is not None else cores
    return max(1, min(cores, jobs, by_memory))


def choose_workers(setting: int, jobs: int, device: str) -> tuple[int, str]:
    """``compare.workers`` resolved, and why."""
    from . import distributed
    from .models import resolve_device
    from .threads import live_processes, usable_cores

    if distributed.world_size() > 1:  # before compare.workers: every rank must run the same jobs in one order
        return 1, "accelerate launch: every process runs each job together"
    if setting > 0:
        return min(setting, max(1, jobs)), "compare.workers"
    env = os.environ.get("STAR_LITE_COMPARE_WORKERS", "").strip()
    if env.isdigit() and int(env) > 0:
        return min(int(env), max(1, jobs)), "STAR_LITE_COMPARE_WORKERS"
    on_gpu = resolve_device(device) != "cpu"
    cores, memory = usable_cores(), available_memory_gb()
    # star_lite runs (another comparison, a `star-lite run`, a bench) already on these cores take theirs
    others = [] if on_gpu else [p for p in live_processes() if p != os.getpid()]
    n = auto_workers(jobs, max(1, cores - len(others)), memory, on_gpu)
    busy = f", {len(others)} other star_lite process{'es' if len(others) > 1 else ''}" if others else ""
    why = "auto: one GPU" if on_gpu else "auto: " + (f"{cores} cores{busy}, {jobs} jobs"
                                                     + (f", {memory:.0f} GB available" if memory else ""))
    return n, why


def run_jobs(jobs: list[Hashable], needs: dict[Any, list[Any]], cost: Callable[[Any], float], workers: int,
             start: Callable[[Any], Any], log: Callable[[str], None] = lambda _: None,
             name: Callable[[Any], str] = str, after: dict[Any, list[Any]] | None = None) -> dict[Any, float]:
    """Run ``jobs`` on ``workers`` slots: whenever a slot is free, the ready job (every job in ``needs[job]``
    done) with the longest ``cost`` plus the longest chain of jobs waiting on it. ``start(job)`` returns a
    ``concurrent.futures.Future`` (or runs the job and returns None: one slot, in this process). A failed
    job does not stop the others; the jobs that need it are skipped, and a ``JobsFailed`` naming each is
    raised at the end. ``after``: jobs a job starts after, finished or failed (an order, not an input: it can
    do without them). Returns each finished job's wall seconds."""
    needs = {j: [n for n in needs.get(j, []) if n in jobs] for j in jobs}
    after = {j: [n for n in (after or {}).get(j, []) if n in jobs and n not in needs[j]] for j in jobs}
    waiting_on: dict[Any, list[Any]] = {j: [k for k in jobs if j in needs[k] or j in after[k]] for j in jobs}
    chain: dict[Any, float] = {}

    def chain_cost(j, seen=()) -> float:  # cost of j and of the longest chain of jobs that wait for it
        if j not in chain:
            if j in seen:  # jobs waiting on each other: named below, when nothing else can run
                return 0.0
            chain[j] = cost(j) + max((chain_cost(k, (*seen, j)) for k in waiting_on[j]), default=0.0)
        return chain[j]

    pending, running, done, failed, seconds = list(jobs), {}, set(), {}, {}
    while pending or running:
        skipped = True
        while skipped:  # a job that needs a skipped job is skipped too, however long the chain
            skipped = [j for j in pending if any(n in failed for n in needs[j])]
            for j in skipped:
                pending.remove(j)
                failed[j] = f"not run: {', '.join(name(n) for n in needs[j] if n in failed)} failed"
        ready = [j for j in pending if all(n in done for n in needs[j])
                 and all(n in done or n in failed for n in after[j])]
        while ready and len(running) < workers:
            job = max(ready, key=lambda j: (chain_cost(j), -jobs.index(j)))
            ready.remove(job)
            pending.remove(job)
            t0 = time.monotonic()
            try:
                future = start(job)
            except Exception as e:  # noqa: BLE001 - reported with the job's name below
                future = cf.Future()
                future.set_exception(e)
            if future is None:
                future = cf.Future()
                future.set_result(None)
            running[future] = (job, t0)
        if not running:  # nothing runs and nothing is ready: what is left waits on itself
            for j in pending:
                failed[j] = "not run: waits for " + ", ".join(name(n) for n in needs[j] + after[j]
                                                              if n not in done and n not in failed)
            break
        finished, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
        for future in finished:
            job, t0 = running.pop(future)
            error = future.exception()
            if error is None:
                done.add(job)
                seconds[job] = time.monotonic() - t0
                log(f"{name(job)} done in {seconds[job]:,.0f} s ({len(done)}/{len(jobs)} jobs)")
            else:
                failed[job] = f"{type(error).__name__}: {error}"
                remote = getattr(error, "__cause__", None)  # a worker process's traceback, as text
                log(f"{name(job)} failed: {failed[job]}" + (f"\n{remote}" if remote is not None else ""))
    if failed:
        raise JobsFailed({name(j): why for j, why in failed.items()})
    return seconds


class JobsFailed(RuntimeError):
    """Some jobs of a pool failed; the others finished and were kept."""

    def __init__(self, failed: dict[Any, str]):
        self.failed = failed
        super().__init__(f"{len(failed)} job(s) failed (the others finished and are kept; running again "
                         "continues them): " + "; ".join(f"{j}: {why}" for j, why in failed.items()))
