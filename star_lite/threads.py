"""How many torch threads a run uses on a CPU (``run.threads``; 0 = auto).

Two processes that each use every core slow each other far more than twice: their threads wait
for one another at every parallel region. So each star_lite process registers itself in a
directory of this machine while it runs (a file named by its pid), and ``auto`` gives it the
usable cores divided among the live ones. A process re-reads the count when a method starts and
at each STaR iteration, so when a seed running beside it finishes, the others take its cores then.
``OMP_NUM_THREADS``, when set, is the user's choice and wins over ``auto``.

>>> auto_threads(cores=2, processes=1), auto_threads(cores=2, processes=3), auto_threads(cores=16, processes=3)
(2, 1, 5)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import torch


def registry() -> Path:
    """Where running star_lite processes register (``STAR_LITE_PROCESS_DIR``, else the temp dir)."""
    return Path(os.environ.get("STAR_LITE_PROCESS_DIR") or Path(tempfile.gettempdir()) / "star_lite_processes")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, as a container or taskset limits it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def live_processes(directory: Path | None = None) -> list[int]:
    """The pids registered in ``directory`` whose process still runs; files of dead ones are removed."""
    directory = directory or registry()
    pids = []
    for path in directory.glob("*") if directory.is_dir() else []:
        if not path.name.isdigit():
            continue
        if _alive(int(path.name)):
            pids.append(int(path.name))
        else:
            path.unlink(missing_ok=True)  # a process killed before it could remove its file
    return sorted(pids)


@contextlib.contextmanager
def registered(directory: Path | None = None) -> Iterator[None]:
    """While inside, this process counts among the star_lite processes running here (nested: once)."""
    directory = directory or registry()
    path = directory / str(os.getpid())
    mine = not path.exists()
    if mine:
        directory.mkdir(parents=True, exist_ok=True)
        path.touch()
    try:
        yield
    finally:
        if mine:
            path.unlink(missing_ok=True)


def auto_threads(cores: int, processes: int) -> int:
    """The cores shared evenly among the processes, at least one thread each."""
    return max(1, cores // max(1, processes))


def choose_threads(setting: int, directory: Path | None = None) -> tuple[int, str]:
    """``run.threads`` resolved, and why: the configured count, OMP_NUM_THREADS, or the cores shared."""
    if setting > 0:
        return setting, "run.threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    cores, processes = usable_cores(), max(1, len(live_processes(directory)))
    return auto_threads(cores, processes), f"{cores} cores, {processes} star_lite process{'es' if processes > 1 else ''}"


_last: list[int] = []  # the count last logged


def apply_threads(setting: int, log=None, directory: Path | None = None) -> tuple[int, str]:
    """Set torch's thread count for the CPU work that follows; logs it when it changes. Returns it and why."""
    n, why = choose_threads(setting, directory)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    if log is not None:
        if _last != [n]:
            log(f"torch threads: {n} ({why})")
        _last[:] = [n]
    return n, why
