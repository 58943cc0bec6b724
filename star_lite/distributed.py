"""The processes of an ``accelerate launch`` run: which one this is, and the few collectives star_lite needs.

A plain ``star-lite run`` is one process (world size 1): nothing here imports accelerate or
touches torch.distributed then, so a single-process run behaves as it always did. Under
``accelerate launch --num_processes N`` accelerate's ``PartialState`` (the state TRL's trainers
share) starts the process group: NCCL on GPUs, gloo on a CPU.
"""

from __future__ import annotations

import os
from typing import Any


def launched() -> bool:
    """True in a process started by ``accelerate launch`` (or torchrun) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def state():
    """accelerate's ``PartialState`` (started on first use). On a machine without a GPU, or with
    ``accelerate launch --cpu``, it runs on the CPU with gloo, as ``TrainingArguments(use_cpu=True)``
    asks for it too."""
    import torch
    from accelerate import PartialState

    cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    return PartialState(cpu=cpu)


def world_size() -> int:
    return state().num_processes if launched() else 1


def rank() -> int:
    return state().process_index if launched() else 0


def local_rank() -> int:
    """This process's index on its machine: the GPU it pins its model to."""
    return state().local_process_index if launched() else 0


def is_main() -> bool:
    """Rank 0, the one process that writes the run directory and shows progress bars."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process gets here (no-op in one process)."""
    if launched():
        state().wait_for_everyone()


def gather(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order, on every process (``[obj]`` in one process)."""
    if not launched():
        return [obj]
    import torch.distributed as dist

    state()
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process."""
    return gather(obj)[0]
