import json

import pytest

from star_lite.tasks import ArithmeticTask, CommonsenseQATask, GSM8KTask, Problem, load_task
from star_lite.tasks.arithmetic import extract_number_answer, scratchpad
from star_lite.tasks.commonsense_qa import extract_choice
from star_lite.tasks.datafiles import DataError


@pytest.mark.parametrize("text, expected", [
    ("45 + 22 = 67. The answer is 67.", "67"),
    ("The answer is 1,234.", "1234"),
    ("The answer is -5 apples", "-5"),
    ("the answer is: 12", "12"),
    ("The answer is 7. Then Q: 3 + 4", "7"),  # trailing text after the answer
    ("First 3, then 4, so 12 in total", "12"),  # no answer sentence: last number
    ("no number here", None),
    ("", None),
    ("The answer is (b).", None),
])
def test_number_extraction(text, expected):
    assert extract_number_answer(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("So it is a cupboard. The answer is (b).", "B"),
    ("The answer is C", "C"),
    ("the answer is (e)", "E"),
    ("between (a) and (d), I pick (d)", "D"),
    ("The answer is 42.", None),
    ("", None),
])
def test_choice_extraction(text, expected):
    assert extract_choice(text) == expected


def test_extraction_never_raises_on_odd_input():
    for task in (ArithmeticTask(), GSM8KTask(), CommonsenseQATask()):
        for text in ["", "\x00\n\n", "answer is", "The answer is ,,,", "(", "9" * 500, None]:
            task.extract_answer(text)
            assert task.is_correct(text, Problem("x", "q", "1")) in (True, False)


def test_scratchpad_is_digit_by_digit_and_correct():
    text = scratchpad(58, 67)
    assert text.startswith("8 + 7 + 0 = 15, write 5 carry 1. 5 + 6 + 1 = 12, write 2 carry 1.")
    assert extract_number_answer(text) == "125"
    # every example in the shipped few-shot prompt grades as correct by the task's own grader
    for style in ("scratchpad", "plain"):
        task = ArithmeticTask(1, 3, rationale=style)
        for ex in task.exemplars():
            assert task.is_correct(ex.rationale, ex.problem)


def test_arithmetic_splits_are_disjoint_seeded_and_in_range():
    task = ArithmeticTask(min_digits=2, max_digits=3)
    train, test = task.load("train", 500, seed=1), task.load("test", 200, seed=1)
    assert len(train) == 500 and len(test) == 200
    assert not {p.question for p in train} & {p.question for p in test}
    assert not {p.question for p in train} & {e.problem.question for e in task.exemplars()}
    assert [p.id for p in task.load("train", 500, seed=1)] == [p.id for p in train]
    assert [p.id for p in task.load("train", 500, seed=2)] != [p.id for p in train]
    for p in train:
        a, b = p.meta["a"], p.meta["b"]
        assert 10 <= a <= 999 and 10 <= b <= 999 and p.answer == str(a + b)
    # the test set does not depend on how many training problems were asked for
    assert [p.id for p in task.load("test", 50, 1)] == [p.id for p in ArithmeticTask(2, 3).load("test", 50, 1)]


def test_arithmetic_small_space_is_capped():
    train = ArithmeticTask(1, 1).load("train", 0, seed=0)
    assert 0 < len(train) < 100  # 100 one-digit pairs, split between train, test and exemplars


def test_hint_formats_and_prompt_layout():
    task = ArithmeticTask(1, 1, rationale="plain")
    p = task.load("train", 1, 0)[0]
    assert task.format_question(p, hint=True) == f"Q: {p.question} (Hint: the answer is {p.answer}.)\nA:"
    prompt = task.prompt(p, hint=False, num_few_shot=3)
    assert prompt.count("Q: ") == 4 and prompt.endswith(task.format_question(p)) and "Hint" not in prompt
    assert task.prompt(p, hint=True, num_few_shot=2).count("(Hint: the answer is") == 3

    g = GSM8KTask()
    gp = Problem("1", "How many?", "12")
    assert g.format_question(gp, hint=True) == "Q: How many? (12)\nA:"


def test_commonsense_hint_marks_the_right_choice_and_is_removed():
    task = CommonsenseQATask()
    p = task._problem("1", "Where?", ["A", "B", "C"], ["x", "y", "z"], "C")
    hinted = task.format_question(p, hint=True)
    assert "(c) z (CORRECT)" in hinted and hinted.count("(CORRECT)") == 1
    assert "(CORRECT)" not in task.format_question(p)
    assert task.remove_hint("z is (CORRECT) here. The answer is (c).") == "z is here. The answer is (c)."
    assert all("(CORRECT)" in task.few_shot_prefix(7, hint=True).split("Q: ")[i] for i in range(1, 8))


def test_clean_completion_cuts_at_stop_strings():
    task = ArithmeticTask()
    assert task.clean_completion(" 2 + 2 = 4. The answer is 4.\n\nQ: What is") == "2 + 2 = 4. The answer is 4."
    assert task.clean_completion(" x\nQ: next") == "x"


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_gsm8k_from_local_jsonl(tmp_path):
    rows = [{"question": f"q{i}?", "answer": f"work\n#### {1000 + i:,}"} for i in range(5)]
    f = _write_jsonl(tmp_path / "gsm.jsonl", rows)
    task = load_task("gsm8k", data_files={"train": str(f), "test": str(f)})
    problems = task.load("train", 0, seed=0)
    assert [p.answer for p in problems] == [str(1000 + i) for i in range(5)]
    assert len(task.load("train", 3, seed=0)) == 3
    assert task.is_correct("so 1,002 in all. The answer is 1,002.", problems[2])


def test_gsm8k_row_missing_a_field_names_file_row_and_field(tmp_path):
    f = _write_jsonl(tmp_path / "bad.jsonl", [{"question": "a", "answer": "#### 1"}, {"question": "b"}])
    with pytest.raises(DataError, match=r"bad.jsonl: row 1 is missing required field 'answer'"):
        load_task("gsm8k", source=str(f)).load("train", 0, 0)


def test_commonsense_qa_from_local_jsonl(tmp_path):
    row = {"id": "r1", "question": "Where?", "answerKey": "B",
           "choices": {"label": ["A", "B", "C", "D", "E"], "text": ["a", "b", "c", "d", "e"]}}
    _write_jsonl(tmp_path / "cqa_validation.jsonl", [row])
    task = load_task("commonsense_qa", source=str(tmp_path))
    (p,) = task.load("test", 0, 0)  # test reads the validation split
    assert p.answer == "B" and "(b) b" in p.question
    assert task.is_correct("It is b. The answer is (b).", p)


def test_load_task_by_import_path_and_errors():
    task = load_task("toy_tasks:NeverRight", min_digits=1, max_digits=1)
    assert task.name == "arithmetic" and not task.is_correct("The answer is 2", Problem("x", "q", "2"))
    with pytest.raises(ValueError, match="unknown task 'arithmetc'"):
        load_task("arithmetc")
    with pytest.raises(ValueError, match="cannot import 'nope.mod:Task'"):
        load_task("nope.mod:Task")
    with pytest.raises(ValueError, match="task.options for 'arithmetic'"):
        load_task("arithmetic", digits=3)
