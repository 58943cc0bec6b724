import json
import re

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


def test_gsm8k_row_missing_a_field_names_file_line_and_field(tmp_path):
    f = _write_jsonl(tmp_path / "bad.jsonl", [{"question": "a", "answer": "#### 1"}, {"question": "b"}])
    with pytest.raises(DataError, match=r"bad.jsonl: line 2 is missing required field 'answer'"):
        load_task("gsm8k", source=str(f)).load("train", 0, 0)
    # a blank line is no row, but it is a line: the message names the line an editor shows
    f.write_text('{"question": "a", "answer": "#### 1"}\n\n{"question": "b", "answer": "no number"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl: line 3 field 'answer' has no '#### <number>'"):
        load_task("gsm8k", source=str(f)).load("train", 0, 0)


def test_csv_rows_are_named_by_their_line_even_when_a_field_spans_lines(tmp_path):
    f = tmp_path / "bad.csv"
    f.write_text('question,answer\n"a,\nlong one",#### 1\n\n"b",\n')
    with pytest.raises(DataError, match=r"bad.csv: line 5 is missing required field 'answer'"):
        load_task("gsm8k", source=str(f)).load("train", 0, 0)


@pytest.mark.parametrize("suffix, text, where", [
    (".jsonl", '{"question": "a", "answer": "#### 1"}\n{"question": "b", "answer": "#### 2"\n', "line 2 is not valid JSON"),
    (".json", '[{"question": "a", "answer": "#### 1"},\n {"question": "b" "answer": "#### 2"}]', "line 2, column 19"),
])
def test_invalid_json_names_the_line(tmp_path, suffix, text, where):
    f = tmp_path / f"bad{suffix}"
    f.write_text(text)
    with pytest.raises(DataError, match=re.escape(f"bad{suffix}: {where}")):
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


# --- graders: an article is not a choice ------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_PHRASES = st.sampled_from(["So the answer is", "The answer is", "the answer is:", "Answer is", "I think the answer is"])
_WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=12)


@settings(max_examples=200, deadline=None)
@given(_PHRASES, st.sampled_from(["a", "an", "the", "e"]), _WORDS, st.sampled_from([".", "", " here.", "!"]))
def test_choice_extraction_does_not_read_an_article_as_a_choice(phrase, article, word, end):
    assert extract_choice(f"{phrase} {article} {word}{end}") is None
    # a marked choice elsewhere in the text still counts
    assert extract_choice(f"(d) fits. {phrase} {article} {word}{end}") == "D"


@settings(max_examples=200, deadline=None)
@given(_PHRASES, st.sampled_from("abcde"),
       st.sampled_from(["({})", "{})", "({}) ", "{{}}"]), st.booleans(), st.sampled_from([".", "", " because it fits."]))
def test_choice_extraction_reads_marked_choices(phrase, letter, form, upper, end):
    if form == "{{}}":  # a bare letter: a capital anywhere, a lower-case one only at the sentence's end
        if not upper and end.startswith(" "):
            return
        form = "{}"
    mark = form.format(letter.upper() if upper else letter)
    assert extract_choice(f"{phrase} {mark}{end}") == letter.upper()


# --- hint leaks --------------------------------------------------------------------------
@pytest.mark.parametrize("task, answer, leaking, honest", [
    (ArithmeticTask(), "67",
     ["(Hint: the answer is 67.) The answer is 67.", "The hint says 67, so the answer is 67.",
      "We were told the answer is 67. The answer is 67.", "What is 45 + 22? (67) The answer is 67."],
     ["45 + 22 = 67. The answer is 67.", "5 + 2 + 0 = 7, write 7 carry 0. 4 + 2 + 0 = 6. 45 + 22 = 67. The answer is 67."]),
    (GSM8KTask(), "1204",
     ["(1204) so the answer is 1204.", "The question ends with ( 1,204 ). The answer is 1,204.",
      "Using the hint, the answer is 1204."],
     ["She has 1000 + 204 = 1204. The answer is 1204.", "3 * (4 + 2) = 18, then 1204. The answer is 1204."]),
    (CommonsenseQATask(), "C",
     ["(c) z (CORRECT). The answer is (c).", "Choice (c) is marked correct. The answer is (c).",
      "It says CORRECT next to (c). The answer is (c).", "The hint points to (c). The answer is (c)."],
     ["A bridge goes over the river. The answer is (c).", "Given the answer choices, only (c) fits. The answer is (c).",
      "That is the correct tool. The answer is (c)."]),
], ids=["arithmetic", "gsm8k", "commonsense_qa"])
def test_leaks_hint_flags_echoes_not_reasoning_that_reaches_the_answer(task, answer, leaking, honest):
    for text in leaking:
        assert task.leaks_hint(text, answer), text
    for text in honest:
        assert not task.leaks_hint(text, answer), text


# --- splits --------------------------------------------------------------------------------
def test_arithmetic_splits_keep_swapped_pairs_together_and_exclude_exemplars():
    task = ArithmeticTask(min_digits=1, max_digits=2)
    splits = {name: task.load(name, n, seed=0) for name, n in (("train", 2000), ("validation", 300), ("test", 400))}
    pairs = {name: {frozenset((p.meta["a"], p.meta["b"])) for p in ps} for name, ps in splits.items()}
    assert all(len(ps) == n for ps, n in zip(splits.values(), (2000, 300, 400)))
    assert not pairs["train"] & pairs["test"] and not pairs["train"] & pairs["validation"]
    assert not pairs["validation"] & pairs["test"]
    exemplar_pairs = {frozenset((e.problem.meta["a"], e.problem.meta["b"])) for e in task.exemplars()}
    assert not exemplar_pairs & (pairs["train"] | pairs["validation"] | pairs["test"])
    # the twin of a test pair is never trainable: a + b in test means b + a is not in train
    train_ordered = {(p.meta["a"], p.meta["b"]) for p in splits["train"]}
    assert not any((p.meta["b"], p.meta["a"]) in train_ordered for p in splits["test"])


def _csqa_row(i):
    return {"id": f"r{i}", "question": f"Where is thing {i}?", "answerKey": "B",
            "choices": {"label": ["A", "B", "C", "D", "E"], "text": ["a", "b", "c", "d", "e"]}}


def test_validation_is_carved_from_train_and_disjoint_from_it(tmp_path):
    gsm = _write_jsonl(tmp_path / "gsm.jsonl", [{"question": f"q{i}?", "answer": f"#### {i}"} for i in range(60)])
    gsm_task = load_task("gsm8k", data_files={"train": str(gsm), "test": str(gsm)}, validation_fraction=0.2)
    _write_jsonl(tmp_path / "cqa_train.jsonl", [_csqa_row(i) for i in range(60)])
    _write_jsonl(tmp_path / "cqa_validation.jsonl", [_csqa_row(100 + i) for i in range(5)])
    cqa_task = load_task("commonsense_qa", source=str(tmp_path), validation_fraction=0.2)
    for task in (gsm_task, cqa_task):
        train, validation = task.load("train", 0, seed=0), task.load("validation", 0, seed=0)
        assert 0 < len(validation) < 30 and len(train) + len(validation) == 60
        assert not {p.question for p in train} & {p.question for p in validation}
        # fixed whatever the seed and the number asked for: a subset of one carved set
        assert {p.question for p in task.load("validation", 3, seed=7)} <= {p.question for p in validation}
        assert not {p.question for p in task.load("train", 10, seed=3)} & {p.question for p in validation}
    assert {p.question for p in cqa_task.load("test", 0, 0)} == {f"Where is thing {100 + i}?\nAnswer Choices:\n"
                                                                 "(a) a\n(b) b\n(c) c\n(d) d\n(e) e" for i in range(5)}


def test_a_users_one_argument_format_hint_still_serves_answer_conditioned_prompts():
    class OwnHint(ArithmeticTask):  # written against the older interface: format_hint(problem)
        def format_hint(self, problem):
            return f"{problem.question} (Hint: it is {problem.answer}.)"

    task = OwnHint(1, 1)
    p = task.load("train", 1, 0)[0]
    assert task.prompt(p, hint=True).endswith(f"(Hint: it is {p.answer}.)\nA:")
    assert task.prompt(p, hint=True, hint_answer="99").endswith("(Hint: it is 99.)\nA:")
    assert task.leaks_hint("(Hint: it is 99.) so 99.", "99") and not task.leaks_hint("4 + 5 = 9.", "9")
