"""AdaSTaR's choice of problems on histories written by hand: the priority's keys in order, and the
curriculum's alpha^2 share (Koh et al. 2025)."""

import pytest

from star_lite.methods.adastar import choose_adaptively, sampling_history
from star_lite.rundir import RunDir, write_jsonl
from star_lite.tasks import Problem


def _problems(*ids):
    return [Problem(i, "q", "1") for i in ids]


def test_every_problem_seen_so_the_last_solved_iteration_decides():
    # no unseen problem: never solved comes first, then solved longest ago, whatever the sample counts
    history = {"a": [(3, True)],                            # solved at 3, sampled once
               "b": [(1, True), (2, False), (3, False)],     # solved at 1, sampled three times
               "c": [(1, False), (2, False), (3, False)],   # never solved, sampled three times
               "d": [(2, True), (3, False)]}                # solved at 2, sampled twice
    chosen = choose_adaptively(_problems("a", "b", "c", "d"), history, 0.5, None, curriculum=False, seed=0)
    assert [p.id for p in chosen] == ["b", "c"]
    three = choose_adaptively(_problems("a", "b", "c", "d"), history, 0.75, None, curriculum=False, seed=0)
    assert [p.id for p in three] == ["b", "c", "d"]


def test_fewest_samples_break_a_tie_in_the_last_solved_iteration():
    history = {"a": [(1, True), (2, False), (3, False)], "b": [(1, True)], "c": [(3, True)]}
    for seed in range(8):  # whatever the seeded random order of ties
        chosen = choose_adaptively(_problems("a", "b", "c"), history, 1 / 3, None, curriculum=False, seed=seed)
        assert [p.id for p in chosen] == ["b"]  # a and b last solved at 1; b sampled once


@pytest.mark.parametrize("accuracy, hard", [(0.5, 2), (0.75, 5), (1.0, 8), (None, 8)])
def test_the_curriculum_gives_alpha_squared_of_the_places_to_priority(accuracy, hard):
    # 8 problems never solved, 8 always solved; 8 places. By priority the 8 hard ones come first;
    # with training accuracy alpha only ceil(alpha^2 * 8) places go by priority, the rest to the easiest
    ids = [f"h{i}" for i in range(8)] + [f"e{i}" for i in range(8)]
    history = {i: [(1, i.startswith("e"))] for i in ids}
    chosen = choose_adaptively(_problems(*ids), history, 0.5, accuracy, curriculum=True, seed=0)
    assert len(chosen) == 8
    assert sum(p.id.startswith("h") for p in chosen) == hard


def test_a_rationalization_does_not_count_as_solved(tmp_path):
    rundir = RunDir(tmp_path)
    write_jsonl(rundir.iter_dir(1) / "samples.jsonl", [
        {"id": "a", "phase": "rationale", "correct": False}, {"id": "a", "phase": "rationalization", "correct": True},
        {"id": "b", "phase": "rationale", "correct": False}, {"id": "b", "phase": "rationale", "correct": True}])
    write_jsonl(rundir.iter_dir(2) / "samples.jsonl", [{"id": "a", "phase": "rationale", "correct": True}])
    assert sampling_history(rundir, 3) == {"a": [(1, False), (2, True)], "b": [(1, True)]}
    assert sampling_history(rundir, 2) == {"a": [(1, False)], "b": [(1, True)]}
