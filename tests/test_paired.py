"""``star-lite paired``: star_lite results, run directories and lm-eval samples, matched by problem."""

import json

import pytest

from star_lite.cli import main
from star_lite.paired import compare_files, read_results
from star_lite.stats import paired_difference


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


A = [True] * 30 + [False] * 10 + [True] * 5 + [False] * 5   # 50 problems
B = [True] * 30 + [True] * 10 + [False] * 5 + [False] * 5


def star_rows(correct, order=None):
    ids = order or range(len(correct))
    return [{"id": f"test-{i}", "question": "q", "gold": "1", "completion": "c", "correct": correct[i]} for i in ids]


def lm_eval_rows(correct):  # lm-eval --log_samples: doc_id, doc, the metric's value per sample
    return [{"doc_id": i, "doc": {"id": f"test-{i}", "question": "q"}, "target": "1", "filtered_resps": ["1"],
             "metrics": ["exact_match"], "exact_match": float(c)} for i, c in enumerate(correct)]


def test_paired_matches_problems_by_id_across_formats(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", star_rows(A, order=list(reversed(range(50)))))  # another order
    b = write_jsonl(tmp_path / "samples_chain.jsonl", lm_eval_rows(B))
    d = compare_files(a, b)
    expected = paired_difference(A, B)
    assert (d["only_a"], d["only_b"], d["n"]) == (5, 10, 50)
    assert d["difference"] == pytest.approx(-0.1) and d["ci_low"] == pytest.approx(expected["ci_low"])
    assert (d["accuracy_a"], d["accuracy_b"]) == (0.7, 0.8)


def test_paired_reads_a_run_directory_s_last_stage(tmp_path):
    run = tmp_path / "run"
    write_jsonl(run / "metrics.jsonl", [{"iteration": 0}, {"iteration": 2}, {"iteration": 1}])
    write_jsonl(run / "iter_001" / "eval.jsonl", star_rows([False] * 50))
    write_jsonl(run / "iter_002" / "eval.jsonl", star_rows(A))
    assert read_results(run) == {f"test-{i}": c for i, c in enumerate(A)}


def test_paired_names_what_does_not_match(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", star_rows(A))
    b = write_jsonl(tmp_path / "b.jsonl", star_rows(B)[:48])
    with pytest.raises(ValueError, match=r"2 only in .*a\.jsonl \(test-48, test-49\), 0 only in"):
        compare_files(a, b)
    bad = write_jsonl(tmp_path / "bad.jsonl", star_rows(A)[:3] + [{"id": "x", "answer": "1"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl row 4: neither"):
        read_results(bad)
    no_metric = write_jsonl(tmp_path / "samples.jsonl", [{"doc_id": 0, "doc": {}, "acc_norm": 1.0}])
    with pytest.raises(ValueError, match="no metric exact_match/acc.*--metric"):
        read_results(no_metric)
    assert read_results(no_metric, metric="acc_norm") == {"0": True}


def test_paired_command_prints_the_difference_and_verdict(tmp_path, capsys):
    a = write_jsonl(tmp_path / "a.jsonl", star_rows([True] * 45 + [False] * 5))
    b = write_jsonl(tmp_path / "b.jsonl", star_rows([True] * 20 + [False] * 30))
    assert main(["paired", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "A 0.900  B 0.400  on 50 problems (A only right on 25, B only right on 0)" in out
    assert "A - B +0.500" in out and "A above B" in out
    assert main(["paired", str(a), str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl: no such file" in capsys.readouterr().err


def test_paired_pools_several_pairs_of_files(tmp_path, capsys):
    """Two seeds of the same two methods: one difference over both seeds' pairs, the same problem
    ids in each seed kept apart."""
    a0 = write_jsonl(tmp_path / "s0" / "a.jsonl", star_rows(A))
    b0 = write_jsonl(tmp_path / "s0" / "b.jsonl", star_rows(B))
    a1 = write_jsonl(tmp_path / "s1" / "a.jsonl", star_rows(B))
    b1 = write_jsonl(tmp_path / "s1" / "b.jsonl", star_rows([True] * 50))
    d = compare_files(a0, b0, a1, b1)
    assert d == {**paired_difference(A + B, B + [True] * 50), "accuracy_a": 0.75, "accuracy_b": 0.9,
                 "num_pairs_of_files": 2}
    with pytest.raises(ValueError, match="pairs of results .* got 3 paths"):
        compare_files(a0, b0, a1)
    assert main(["paired", str(a0), str(b0), str(a1), str(b1)]) == 0
    assert "on 100 problems, pooled over 2 pairs of files" in capsys.readouterr().out


def test_paired_reads_v_star_candidates_as_majority_or_best_of(tmp_path):
    def cand(pid, sample, answer, correct, score):
        return {"id": pid, "sample": sample, "completion": f"The answer is {answer}.", "answer": answer,
                "correct": correct, "verifier_score": score, "tokens": 5}

    rows = [cand("p1", 0, "3", False, 0.9), cand("p1", 1, "4", True, 0.1), cand("p1", 2, "4", True, 0.2),
            cand("p2", 0, "7", True, 0.0), cand("p2", 1, "8", False, 0.5),   # a tie: the first answer wins
            cand("p3", 0, None, False, 0.3), cand("p3", 1, None, False, 0.1)]  # no answer: no majority
    path = write_jsonl(tmp_path / "candidates.jsonl", rows)
    assert read_results(path) == {"p1": True, "p2": True, "p3": False}
    assert read_results(path, metric="best_of") == {"p1": False, "p2": False, "p3": False}
    with pytest.raises(ValueError, match="majority .* or best_of"):
        read_results(path, metric="exact_match")
