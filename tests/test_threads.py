"""run.threads: the cores shared among the star_lite processes running side by side."""

import os
import subprocess
import sys

import pytest
import torch

from star_lite.threads import apply_threads, choose_threads, live_processes, registered, usable_cores


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_live_processes_are_the_registered_ones_still_running(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        for pid in (child.pid, dead.pid):
            (tmp_path / str(pid)).touch()
        with registered(tmp_path):
            assert live_processes(tmp_path) == sorted([os.getpid(), child.pid])
            assert not (tmp_path / str(dead.pid)).exists()  # a killed process's file is cleared
            with registered(tmp_path):  # nested (a method calling the loop): still one entry
                assert live_processes(tmp_path) == sorted([os.getpid(), child.pid])
        assert live_processes(tmp_path) == [child.pid]  # this process left on exit
    finally:
        child.kill()
        child.wait()
    assert live_processes(tmp_path) == []


def test_auto_shares_the_cores_among_the_processes_running_here(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("star_lite.threads.usable_cores", lambda: 16)
    others = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) for _ in range(2)]
    try:
        with registered(tmp_path):
            assert choose_threads(0, tmp_path) == (16, "16 cores, 1 star_lite process")
            for p in others:
                (tmp_path / str(p.pid)).touch()
            assert choose_threads(0, tmp_path) == (5, "16 cores, 3 star_lite processes")  # 16 // 3
            assert choose_threads(4, tmp_path) == (4, "run.threads")  # set: as set
            monkeypatch.setenv("OMP_NUM_THREADS", "7")
            assert choose_threads(0, tmp_path) == (7, "OMP_NUM_THREADS")  # the user's own choice wins over auto
    finally:
        for p in others:
            p.kill()
            p.wait()


def test_apply_sets_torch_and_a_run_uses_it(tmp_path, monkeypatch, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert apply_threads(1, directory=tmp_path) == (1, "run.threads") and torch.get_num_threads() == 1
    with registered(tmp_path):
        assert apply_threads(0, directory=tmp_path)[0] == usable_cores() == torch.get_num_threads()


def test_a_run_sets_its_threads_and_says_so(tiny_model_dir, tmp_path, monkeypatch, capsys, restore_threads):
    from star_lite.config import from_dict
    from star_lite.loop import run

    from conftest import tiny_config_dict

    monkeypatch.setenv("STAR_LITE_PROCESS_DIR", str(tmp_path / "processes"))
    monkeypatch.setattr("star_lite.threads._last", [])  # nothing logged before in this process
    torch.set_num_threads(2)
    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path / "run", star={"iterations": 1},
                                     run={"threads": 1}, task={"num_train": 4, "num_test": 2}))
    run(cfg)
    assert torch.get_num_threads() == 1
    assert "torch threads: 1 (run.threads)" in capsys.readouterr().err
    assert list((tmp_path / "processes").iterdir()) == []  # unregistered when the run ended


def test_a_run_rereads_its_threads_as_each_phase_begins(tmp_path, monkeypatch, restore_threads):
    """Processes launched together register in any order: the first may see itself alone. Inside a run
    (loop.running) each outermost phase and each evaluation re-reads the count, and nothing does after."""
    from star_lite import phases
    from star_lite.config import from_dict
    from star_lite.loop import running

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("STAR_LITE_PROCESS_DIR", str(tmp_path))
    monkeypatch.setattr("star_lite.threads.usable_cores", lambda: 4)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with running(from_dict({"run": {"threads": 0}})):
            with phases.phase("sampling"):
                assert torch.get_num_threads() == 4  # alone
                (tmp_path / str(other.pid)).touch()  # a process beside it registers
                with phases.phase("eval"):  # inside a phase: not re-read
                    assert torch.get_num_threads() == 4
            with phases.phase("training"):
                assert torch.get_num_threads() == 2  # 4 cores, 2 processes
            other.kill()
            other.wait()
            phases.began()  # as evaluation begins
            assert torch.get_num_threads() == 4
    finally:
        other.kill()
        other.wait()
    torch.set_num_threads(1)
    with phases.phase("sampling"):  # the run has ended: its hook with it
        assert torch.get_num_threads() == 1
