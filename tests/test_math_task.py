"""The math task: MATH rows (problem, solution, level, type), gold from the last \\boxed{}, graded by
math-verify, which accepts equivalent forms a string grader misses and refuses wrong ones."""

import json
import threading

import pytest

from star_lite.tasks import Problem, load_task
from star_lite.tasks.datafiles import DataError

# hand-written rows in the MATH schema (not from the dataset)
ROWS = [
    {"problem": "What is $\\frac{3}{6}$ in lowest terms?", "level": "Level 1", "type": "Prealgebra",
     "solution": "Divide top and bottom by 3: $\\frac{3}{6} = \\boxed{\\frac{1}{2}}$."},
    {"problem": "Solve $x - 4 = -1$.", "level": "Level 1", "type": "Algebra",
     "solution": "Add 4 to both sides; $x = \\boxed{3}$."},
    {"problem": "For which $x$ is $x + 1 \\le 4$?", "level": "Level 2", "type": "Algebra",
     "solution": "$x \\le 3$, which is $\\boxed{(-\\infty, 3]}$."},
    {"problem": "What is $\\sin 45^\\circ$?", "level": "Level 2", "type": "Precalculus",
     "solution": "It is $\\boxed{\\frac{\\sqrt{2}}{2}}$."},
    {"problem": "Which open interval lies strictly between 3 and 5?", "level": "Level 4", "type": "Algebra",
     "solution": "Not $\\boxed{[3,5]}$, which holds 3 and 5; strictly between: $\\boxed{(3,5)}$."},
    {"problem": "What is $2 + 3$?", "level": 5, "subject": "Prealgebra", "answer": "5",  # MATH-500's fields
     "solution": "First $\\boxed{4}$ was a slip; $2 + 3 = 5$."},
]

# (row, completion, right?): equivalent forms first, then wrong answers
CASES = [
    (0, "Halve it. The answer is $\\boxed{0.5}$.", True),
    (0, "The answer is $\\boxed{\\dfrac{1}{2}}$.", True),
    (0, "The answer is $\\boxed{\\frac12}$.", True),
    (1, "So $x = 3$. The answer is $\\boxed{x=3}$.", True),
    (2, "The answer is $\\boxed{(-\\infty,3]}$.", True),
    (3, "The answer is $\\boxed{\\sqrt{2}/2}$.", True),
    (5, "The answer is 5.", True),
    (0, "The answer is $\\boxed{\\frac{1}{3}}$.", False),
    (1, "The answer is $\\boxed{x=4}$.", False),
    (4, "The answer is $\\boxed{[3,5)}$.", False),
    (5, "The answer is $\\boxed{4}$.", False),
    (2, "I am not sure.", False),
]


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def task_and_problems(tmp_path):
    f = write_rows(tmp_path / "math.jsonl", ROWS)
    task = load_task("math", data_files={"train": f, "test": f})
    problems = sorted(task.load("test", 0, seed=0), key=lambda p: int(p.id.split("-")[-1]))
    return task, problems


def test_gold_is_the_answer_field_or_the_last_boxed_and_levels_filter(tmp_path, task_and_problems):
    task, problems = task_and_problems
    assert [p.answer for p in problems] == ["\\frac{1}{2}", "3", "(-\\infty, 3]", "\\frac{\\sqrt{2}}{2}", "(3,5)", "5"]
    assert [task.difficulty(p) for p in problems] == ["level 1", "level 1", "level 2", "level 2", "level 4", "level 5"]
    f = write_rows(tmp_path / "m.jsonl", ROWS)
    easy = load_task("math", data_files={"train": f, "test": f}, levels=[1, 2]).load("test", 0, seed=0)
    assert len(easy) == 4
    with pytest.raises(ValueError, match="levels are 1 to 5"):
        load_task("math", levels=[0])


def test_math_verify_accepts_equivalent_forms_a_string_grader_misses(task_and_problems):
    task, problems = task_and_problems
    got = [task.is_correct(c, problems[i]) for i, c, _ in CASES]
    assert got == [want for _, _, want in CASES]
    string_grader = [task.extract_answer(c) == problems[i].answer for i, c, want in CASES if want]
    assert string_grader.count(False) >= 5  # what the plain comparison would have marked wrong
    for ex in task.exemplars():  # the worked examples grade right
        assert task.is_correct(ex.rationale, ex.problem), ex.rationale


def test_grading_off_the_main_thread_gives_the_same_grades(task_and_problems):
    task, problems = task_and_problems
    got = []
    worker = threading.Thread(target=lambda: got.extend(task.is_correct(c, problems[i]) for i, c, _ in CASES))
    worker.start()
    worker.join()
    assert got == [want for _, _, want in CASES]


def test_a_row_without_an_answer_names_file_line_and_field(tmp_path):
    f = write_rows(tmp_path / "bad.jsonl", ROWS[:2] + [{"problem": "p", "solution": "no box", "level": "Level 1"}])
    with pytest.raises(DataError, match=r"bad\.jsonl: line 3 field 'solution' has no \\boxed"):
        load_task("math", data_files={"train": f, "test": f}).load("test", 0, 0)


def test_hub_loading_reads_each_subject_config(monkeypatch):
    """The Hub path: one datasets.load_dataset call per subject config, ids unique across subjects."""
    import datasets

    calls = []

    def fake_load_dataset(source, config_name, split):
        calls.append((source, config_name, split))
        return [dict(r, type=config_name) for r in ROWS[:2]]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    problems = load_task("math", subjects=["algebra", "geometry"]).load("test", 0, seed=0)
    assert calls == [("EleutherAI/hendrycks_math", "algebra", "test"), ("EleutherAI/hendrycks_math", "geometry", "test")]
    assert len({p.id for p in problems}) == 4 and {p.meta["subject"] for p in problems} == {"algebra", "geometry"}
    calls.clear()
    load_task("math", source="HuggingFaceH4/MATH-500", subjects=None).load("test", 0, seed=0)
    assert calls == [("HuggingFaceH4/MATH-500", None, "test")]


def test_the_hint_is_the_answer_and_a_hint_that_leaks_is_caught():
    task = load_task("math")
    p = Problem("x", "Solve $x - 4 = -1$.", "3")
    assert task.format_hint(p).endswith("(Hint: the answer is $3$.)")
    assert task.leaks_hint("(Hint: the answer is $3$.) The answer is $\\boxed{3}$.", "3")
    assert not task.leaks_hint("Add 4 to both sides. The answer is $\\boxed{3}$.", "3")
