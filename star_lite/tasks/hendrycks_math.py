"""MATH (Hendrycks et al., 2021), ReST-EM's headline benchmark, graded with math-verify.

Fields (the schema of `EleutherAI/hendrycks_math` and of `HuggingFaceH4/MATH-500`): ``problem``,
``solution`` (its final answer in the last ``\\boxed{}``), ``level`` (``"Level 3"`` or ``3``),
``type`` or ``subject``; MATH-500 also has ``answer``. The gold answer is ``answer`` when given,
else the solution's last ``\\boxed{}``. A completion is right when math-verify's ``verify`` finds
its answer equivalent to the gold one (``\\frac12``, ``0.5`` and ``\\dfrac{1}{2}`` are one answer;
so are ``x=3`` and ``3``, or ``(-\\infty, 3]`` written with other spacing), which string
matching gets wrong. MATH has no validation split: ``validation`` is carved from ``train`` by a
hash of the problem, as for GSM8K.
"""

from __future__ import annotations

import re
import threading

from .base import Exemplar, Problem, Task
from .datafiles import (DataError, carved_for_validation, check_validation_fraction, choose, load_rows,
                        require_fields)

SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
            "prealgebra", "precalculus")

# Worked examples written for star_lite in MATH's style (not taken from the dataset): one paragraph
# each (a blank line ends a completion), the answer boxed at the end.
_EXEMPLARS = [
    ("What is the value of $x$ if $3x + 7 = 22$?",
     "Subtract 7 from both sides: $3x = 15$. Divide by 3: $x = 5$. The answer is $\\boxed{5}$.", "5"),
    ("Simplify $\\frac{6}{8} + \\frac{1}{4}$.",
     "$\\frac{6}{8} = \\frac{3}{4}$, and $\\frac{3}{4} + \\frac{1}{4} = \\frac{4}{4} = 1$. "
     "The answer is $\\boxed{1}$.", "1"),
    ("How many positive divisors does 12 have?",
     "$12 = 2^2 \\cdot 3$, so it has $(2+1)(1+1) = 6$ divisors: 1, 2, 3, 4, 6 and 12. "
     "The answer is $\\boxed{6}$.", "6"),
    ("For which $x$ is $2x - 1 \\le 5$? Give your answer in interval notation.",
     "Add 1: $2x \\le 6$, so $x \\le 3$. The answer is $\\boxed{(-\\infty, 3]}$.", "(-\\infty, 3]"),
    ("A fair coin is flipped twice. What is the probability of two heads?",
     "Each flip is heads with probability $\\frac{1}{2}$, so both are with $\\frac{1}{2} \\cdot \\frac{1}{2} = "
     "\\frac{1}{4}$. The answer is $\\boxed{\\frac{1}{4}}$.", "\\frac{1}{4}"),
    ("What is the area of a right triangle with legs 5 and 12?",
     "The area of a right triangle is half the product of its legs: $\\frac{5 \\cdot 12}{2} = 30$. "
     "The answer is $\\boxed{30}$.", "30"),
    ("Find the remainder when $2^{10}$ is divided by 7.",
     "$2^3 = 8 \\equiv 1 \\pmod 7$, so $2^{10} = (2^3)^3 \\cdot 2 \\equiv 2 \\pmod 7$. "
     "The answer is $\\boxed{2}$.", "2"),
    ("What is $\\sqrt{50}$ in simplest radical form?",
     "$\\sqrt{50} = \\sqrt{25 \\cdot 2} = 5\\sqrt{2}$. The answer is $\\boxed{5\\sqrt{2}}$.", "5\\sqrt{2}"),
]


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced.

    >>> last_boxed("so $x = \\\\boxed{\\\\frac{1}{2}}$, not \\\\boxed{3")
    '\\\\frac{1}{2}'
    """
    best = None
    for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                best = text[start:i]
                break
    return best.strip() if best is not None else None


def _level(value) -> int | None:
    digits = re.findall(r"\d+", str(value))
    return int(digits[0]) if digits else None


class MathTask(Task):
    """MATH from the Hub (default: the seven subjects of ``EleutherAI/hendrycks_math``) or local files.

    ``source``: a Hub id or local path; ``subjects``: the Hub configs to load (``None`` for a
    dataset without configs; ``HuggingFaceH4/MATH-500`` has a test split only, so a run needs its
    train split elsewhere: ``data_files`` with both); ``levels``: keep only these levels (1-5).
    """

    name = "math"

    def __init__(self, source: str = "EleutherAI/hendrycks_math", subjects: list[str] | None = SUBJECTS,
                 levels: list[int] | None = None, data_files: dict[str, str] | None = None,
                 validation_fraction: float = 0.1):
        check_validation_fraction(validation_fraction)
        if levels is not None and not all(isinstance(v, int) and 1 <= v <= 5 for v in levels):
            raise ValueError(f"task.options.levels: MATH's levels are 1 to 5, got {levels}")
        self.source, self.data_files = source, data_files
        self.subjects = list(subjects) if subjects else None
        self.levels, self.validation_fraction = levels, validation_fraction

    def _rows(self, split: str):
        if self.data_files or not self.subjects:
            yield "", *load_rows(self.source, split, None, self.data_files)
        else:
            for subject in self.subjects:
                yield subject, *load_rows(self.source, split, subject, None)

    def load(self, split: str, limit: int, seed: int) -> list[Problem]:
        carved = split in ("train", "validation")
        problems = []
        for tag, rows, where in self._rows("train" if carved else split):
            for i, row in enumerate(rows):
                require_fields(row, ("problem", "solution"), where, i)
                gold = str(row["answer"]).strip() if row.get("answer") not in (None, "") else \
                    last_boxed(str(row["solution"]))
                if gold is None:
                    raise DataError(f"{where}: {where.row(i)} field 'solution' has no \\boxed{{}} answer "
                                    "(and the row has no 'answer')")
                level = _level(row.get("level", ""))
                if self.levels is not None and level not in self.levels:
                    continue
                question = str(row["problem"]).strip()
                if carved and carved_for_validation(question, self.validation_fraction) != (split == "validation"):
                    continue
                subject = str(row.get("type") or row.get("subject") or "")
                problems.append(Problem(id=f"{split}-{tag}-{i}" if tag else f"{split}-{i}", question=question, answer=gold,
                                        meta={"level": level, "subject": subject}))
        return choose(problems, limit, seed)

    def exemplars(self) -> list[Exemplar]:
        return [Exemplar(Problem(f"exemplar-{i}", q, a), r) for i, (q, r, a) in enumerate(_EXEMPLARS)]

    def format_hint(self, problem: Problem, answer: str | None = None) -> str:
        return f"{problem.question} (Hint: the answer is ${problem.answer if answer is None else answer}$.)"

    def extract_answer(self, completion: str) -> str | None:
        boxed = last_boxed(completion)
        if boxed is not None:
            return boxed
        marker = "The answer is"
        if marker not in completion:
            return None
        return completion.rsplit(marker, 1)[1].strip().rstrip(".").strip("$ ") or None

    def is_correct(self, completion: str, problem: Problem) -> bool:
        answer = self.extract_answer(completion)
        if answer is None:
            return False
        if answer == problem.answer:
            return True
        return equivalent(problem.answer, answer)

    def difficulty(self, problem: Problem) -> str | None:
        level = problem.meta.get("level")
        return f"level {level}" if level is not None else None


def equivalent(gold: str, answer: str) -> bool:
    """math-verify's equivalence of two LaTeX answers (no timeout outside the main thread, where its
    signal-based timeout cannot run)."""
    try:
        from math_verify import parse, verify
    except ImportError:
        raise DataError('the math task grades with math-verify: pip install "star-lite[math]"') from None
    main = threading.current_thread() is threading.main_thread()
    timeout = 5 if main else None
    try:
        return bool(verify(parse(f"${gold}$", parsing_timeout=timeout), parse(f"${answer}$", parsing_timeout=timeout),
                           timeout_seconds=timeout))
    except Exception:  # an answer math-verify cannot read is not right
        return False
