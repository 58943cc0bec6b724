"""CommonsenseQA (schema of `tau/commonsense_qa`): five-way multiple choice.

Fields: ``question``, ``choices`` = {``label``: [A..E], ``text``: [...]}, ``answerKey``.
The test split has no labels, so the dataset's ``validation`` split serves as our ``test``; our
``validation`` (what early stopping looks at) is carved from ``train`` instead
(``validation_fraction`` of its questions, by a hash of the text), and never loaded as ``train``.
"""

from __future__ import annotations

import re

from .base import Exemplar, Problem, Task, cites_hint
from .datafiles import (DataError, carved_for_validation, check_validation_fraction, choose, load_rows,
                        require_fields)

CORRECT_MARK = "(CORRECT)"
# After "answer is", a letter is a choice when it is marked as one: "(b)", "b)", a capital "B",
# or a lone lower-case letter ending the sentence ("b."). A lower-case "a" followed by a word
# is the article ("the answer is a library"), not choice (a).
_ANSWER = re.compile(r"[Aa]nswer is\s*:?\s*(?:\(\s*([A-Ea-e])\s*\)|([A-Ea-e])\)|([A-E])\b|([a-e])(?=\s*(?:[.,;:!?]|$)))")
_PAREN = re.compile(r"\(([A-Ea-e])\)")
_CITES_MARK = re.compile(r"\(\s*correct\s*\)|(?-i:\bCORRECT\b)|\bmarked\s+(as\s+)?(the\s+)?(right|correct)\b",
                         re.IGNORECASE)

# Worked examples written for star_lite (not taken from the dataset).
_EXEMPLARS = [
    ("Where would you put a cup after washing it?", ["sink", "cupboard", "table", "garden", "car"], "B",
     "A clean cup is stored until it is needed, and cups are stored in a cupboard. The answer is (b)."),
    ("What do people usually do when they are tired?", ["run", "sleep", "sing", "cook", "shop"], "B",
     "Being tired means needing rest, and people rest by sleeping. The answer is (b)."),
    ("Where can you borrow a book for free?", ["bookstore", "kitchen", "library", "bank", "stadium"], "C",
     "A library lends books to its members without charge. The answer is (c)."),
    ("What does a plant need to make its food?", ["darkness", "sunlight", "salt", "music", "plastic"], "B",
     "Plants make food by photosynthesis, which uses sunlight. The answer is (b)."),
    ("If you want to cross a river without getting wet, what would you use?",
     ["umbrella", "towel", "bridge", "shovel", "ladder"], "C",
     "A bridge goes over the river, so you stay dry. The answer is (c)."),
    ("Where is a cow most likely to be found?", ["ocean", "farm", "office", "cinema", "desert"], "B",
     "Cows are raised by farmers and live on farms. The answer is (b)."),
    ("What would you use to cut paper?", ["spoon", "pillow", "scissors", "bucket", "brush"], "C",
     "Scissors have sharp blades made for cutting paper. The answer is (c)."),
]


def format_choices(stem: str, labels: list[str], texts: list[str], correct: str | None = None) -> str:
    """The question with its lettered choices; ``correct`` marks that choice with (CORRECT).

    >>> print(format_choices("Pick one.", ["A", "B"], ["x", "y"], correct="B"))
    Pick one.
    Answer Choices:
    (a) x
    (b) y (CORRECT)
    """
    lines = [stem, "Answer Choices:"]
    for label, text in zip(labels, texts):
        mark = f" {CORRECT_MARK}" if label == correct else ""
        lines.append(f"({label.lower()}) {text}{mark}")
    return "\n".join(lines)


def extract_choice(completion: str) -> str | None:
    """The chosen letter, upper case: from 'The answer is (b).', else the last '(x)'; None if none.

    >>> extract_choice("The answer is (b)."), extract_choice("so (c) fits"), extract_choice("no idea")
    ('B', 'C', None)
    >>> extract_choice("So the answer is a library."), extract_choice("The answer is B")
    (None, 'B')
    """
    if not isinstance(completion, str):
        return None
    match = _ANSWER.search(completion)
    if match:
        return next(g for g in match.groups() if g).upper()
    found = _PAREN.findall(completion)
    return found[-1].upper() if found else None


class CommonsenseQATask(Task):
    name = "commonsense_qa"

    def __init__(self, source: str = "tau/commonsense_qa", config_name: str | None = None,
                 data_files: dict[str, str] | None = None, test_split: str = "validation",
                 validation_fraction: float = 0.1):
        check_validation_fraction(validation_fraction)
        self.source, self.config_name, self.data_files = source, config_name, data_files
        self.test_split = test_split
        self.validation_fraction = validation_fraction

    def _problem(self, pid: str, stem: str, labels: list[str], texts: list[str], key: str) -> Problem:
        return Problem(id=pid, question=format_choices(stem, labels, texts), answer=key.upper(),
                       meta={"stem": stem, "labels": list(labels), "texts": list(texts)})

    def load(self, split: str, limit: int, seed: int) -> list[Problem]:
        carved = split in ("train", "validation")
        source_split = "train" if carved else self.test_split if split == "test" else split
        rows, where = load_rows(self.source, source_split, self.config_name, self.data_files)
        problems = []
        for i, row in enumerate(rows):
            require_fields(row, ("question", "choices", "answerKey"), where, i)
            choices = row["choices"]
            if not isinstance(choices, dict) or not choices.get("label") or not choices.get("text"):
                raise DataError(f"{where}: {where.row(i)} field 'choices' needs 'label' and 'text' lists")
            stem = str(row["question"]).strip()
            if carved and carved_for_validation(stem, self.validation_fraction) != (split == "validation"):
                continue
            problems.append(self._problem(f"{source_split}-{row.get('id', i)}", stem,
                                          choices["label"], choices["text"], str(row["answerKey"])))
        return choose(problems, limit, seed)

    def exemplars(self) -> list[Exemplar]:
        labels = ["A", "B", "C", "D", "E"]
        return [Exemplar(self._problem(f"exemplar-{i}", q, labels, texts, key), r)
                for i, (q, texts, key, r) in enumerate(_EXEMPLARS)]

    def format_hint(self, problem: Problem, answer: str | None = None) -> str:
        return format_choices(problem.meta["stem"], problem.meta["labels"], problem.meta["texts"],
                              correct=problem.answer if answer is None else answer)

    def wrong_answers(self, problem: Problem, num: int) -> list[str]:
        """The other choices."""
        return [label.upper() for label in problem.meta["labels"] if label.upper() != problem.answer][:num]

    def direct_answer(self, problem: Problem) -> str:
        return f"The answer is ({problem.answer.lower()})."

    def remove_hint(self, rationale: str) -> str:
        return re.sub(r"\s*\(CORRECT\)", "", rationale)

    def leaks_hint(self, completion: str, answer: str) -> bool:
        """The hint is the '(CORRECT)' mark on a choice: echoing the mark, or saying a choice is
        marked right, gives it away; reasoning that ends in '(c)' does not.

        >>> t = CommonsenseQATask()
        >>> t.leaks_hint("(c) z (CORRECT). The answer is (c).", "C"), t.leaks_hint("Bridges span rivers. The answer is (c).", "C")
        (True, False)
        """
        if not isinstance(completion, str):
            return False
        return bool(_CITES_MARK.search(completion)) or cites_hint(completion)

    def extract_answer(self, completion: str) -> str | None:
        return extract_choice(completion)
