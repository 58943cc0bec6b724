"""GSM8K grade-school math (schema of `openai/gsm8k`, config `main`).

Fields: ``question``; ``answer`` whose gold number follows ``#### `` at its end.
GSM8K has no validation split: ``validation`` is carved from ``train`` (``validation_fraction``
of its questions, by a hash of the text), and those questions are never loaded as ``train``.
"""

from __future__ import annotations

from .arithmetic import echoes_number_hint, extract_number_answer, parse_int
from .base import Exemplar, Problem, Task
from .datafiles import (DataError, carved_for_validation, check_validation_fraction, choose, load_rows,
                        require_fields)

# Worked examples written for star_lite in GSM8K's style (not taken from the dataset).
_EXEMPLARS = [
    ("A baker makes 24 rolls in the morning and 18 in the afternoon. She sells 30 of them. How many rolls are left?",
     "She makes 24 + 18 = 42 rolls. After selling 30, 42 - 30 = 12 are left. The answer is 12.", "12"),
    ("Tom reads 15 pages a day. How many pages does he read in 2 weeks?",
     "Two weeks have 2 * 7 = 14 days. He reads 15 * 14 = 210 pages. The answer is 210.", "210"),
    ("A box holds 6 eggs. Maria has 50 eggs. How many boxes can she fill completely?",
     "50 / 6 = 8 with 2 left over, so she fills 8 boxes. The answer is 8.", "8"),
    ("A shirt costs $20 and is on sale for 25% off. What is the sale price in dollars?",
     "25% of 20 is 20 * 0.25 = 5. The sale price is 20 - 5 = 15. The answer is 15.", "15"),
    ("Sam has 3 times as many marbles as Lee. Lee has 7 marbles. How many marbles do they have together?",
     "Sam has 3 * 7 = 21 marbles. Together they have 21 + 7 = 28. The answer is 28.", "28"),
    ("A train travels 60 miles per hour for 3 hours, then 40 miles per hour for 2 hours. How far does it go?",
     "First 60 * 3 = 180 miles, then 40 * 2 = 80 miles. In all 180 + 80 = 260 miles. The answer is 260.", "260"),
    ("There are 5 rows of chairs with 12 chairs in each row. 17 chairs are taken. How many are free?",
     "There are 5 * 12 = 60 chairs. 60 - 17 = 43 are free. The answer is 43.", "43"),
    ("Ann saves $8 each week. How many weeks does she need to save $100 if she already has $36?",
     "She still needs 100 - 36 = 64 dollars. 64 / 8 = 8 weeks. The answer is 8.", "8"),
]


def gold_answer(answer_field: str) -> str | None:
    """The number after '#### ' (commas removed).

    >>> gold_answer("She has 3 + 4 = 7 apples.\\n#### 1,007")
    '1007'
    """
    if "####" not in answer_field:
        return None
    return parse_int(answer_field.split("####")[-1])


class GSM8KTask(Task):
    """GSM8K from the Hub (default ``openai/gsm8k``) or local files with the same fields."""

    name = "gsm8k"

    def __init__(self, source: str = "openai/gsm8k", config_name: str | None = "main",
                 data_files: dict[str, str] | None = None, validation_fraction: float = 0.1):
        check_validation_fraction(validation_fraction)
        self.source, self.config_name, self.data_files = source, config_name, data_files
        self.validation_fraction = validation_fraction

    def load(self, split: str, limit: int, seed: int) -> list[Problem]:
        carved = split in ("train", "validation")
        rows, where = load_rows(self.source, "train" if carved else split, self.config_name, self.data_files)
        problems = []
        for i, row in enumerate(rows):  # ids keep the row's index in its file
            require_fields(row, ("question", "answer"), where, i)
            gold = gold_answer(str(row["answer"]))
            if gold is None:
                raise DataError(f"{where}: {where.row(i)} field 'answer' has no '#### <number>' at its end")
            question = str(row["question"]).strip()
            if carved and carved_for_validation(question, self.validation_fraction) != (split == "validation"):
                continue
            problems.append(Problem(id=f"{split}-{i}", question=question, answer=gold))
        return choose(problems, limit, seed)

    def exemplars(self) -> list[Exemplar]:
        return [Exemplar(Problem(f"exemplar-{i}", q, a), r) for i, (q, r, a) in enumerate(_EXEMPLARS)]

    def format_hint(self, problem: Problem, answer: str | None = None) -> str:
        return f"{problem.question} ({problem.answer if answer is None else answer})"  # as the STaR reference code: answer in parentheses

    def leaks_hint(self, completion: str, answer: str) -> bool:
        """The hint is the answer in parentheses after the question: '(67)' gives it away."""
        return super().leaks_hint(completion, answer) or echoes_number_hint(completion, answer)

    def extract_answer(self, completion: str) -> str | None:
        return extract_number_answer(completion)
