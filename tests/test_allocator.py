"""run.malloc: memory a step freed serves the next one instead of being faulted in again."""

import subprocess
import sys

import pytest

from star_lite.allocator import glibc
from star_lite.config import ConfigError, from_dict

CYCLE = """
import resource, sys
import torch
from star_lite.allocator import apply_malloc
applied = [apply_malloc(s, "cpu") for s in sys.argv[1].split(",")][-1]
def cycle():  # a 64 MB temporary, written and freed, as a training step's logits are
    t = torch.empty(2**24)
    t.fill_(1.0)
    del t
for _ in range(4):  # glibc settles its heap in the first few
    cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    cycle()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(settings: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", CYCLE, settings], capture_output=True, text=True, check=True)
    applied, count = out.stdout.split()
    return applied, int(count)


@pytest.mark.skipif(glibc() is None, reason="run.malloc changes glibc's allocator only")
def test_retain_reuses_freed_memory_and_default_puts_it_back():
    pages = 2**26 // 4096  # of one 64 MB cycle
    applied, untouched = faults("default")
    assert applied == "False" and untouched > 2 * pages  # glibc mmaps a 64 MB block afresh at each cycle
    applied, kept = faults("retain")
    assert applied == "True" and kept < pages // 8
    applied, back = faults("auto,default")  # auto on a CPU retains; default restores glibc's values
    assert applied == "False" and back > 2 * pages


def test_malloc_setting_is_checked_and_resumable():
    with pytest.raises(ConfigError, match="run.malloc"):
        from_dict({"run": {"malloc": "keep"}})
    from star_lite.config import RESUMABLE_KEYS

    assert "run.malloc" in RESUMABLE_KEYS
