"""n-digit addition, generated and seeded; the task STaR bootstraps on the embedded model.

Train, validation and test problems are disjoint by construction: each unordered pair {a, b}
belongs to exactly one split, chosen by a hash of the pair, so ``a + b`` and ``b + a`` are
never on both sides and the test set never depends on the train size. The few-shot
exemplars' pairs (either order) are in no split.
"""

from __future__ import annotations

import hashlib
import random
import re

from .base import Exemplar, Problem, Task, cites_hint

_ANSWER = re.compile(r"answer is\s*:?\s*\(?\s*(-?[\d,]*\d)")
_NUMBER = re.compile(r"-?\d[\d,]*")
_PAREN_NUMBER = re.compile(r"\(\s*(-?[\d,]*\d)\s*\.?\s*\)")


def parse_int(text: str) -> str | None:
    """Canonical integer string from text like '1,234' or '-7'; None if there is none.

    >>> parse_int("1,234"), parse_int("-07"), parse_int("abc")
    ('1234', '-7', None)
    """
    digits = text.replace(",", "").strip()
    try:
        return str(int(digits))
    except ValueError:
        return None


def extract_number_answer(completion: str) -> str | None:
    """The number after 'The answer is', else the last number in the text; None if no number.

    >>> extract_number_answer("45 + 22 = 67. The answer is 67.")
    '67'
    >>> extract_number_answer("so we get 1,204 apples")
    '1204'
    >>> extract_number_answer("I do not know") is None
    True
    """
    if not isinstance(completion, str):
        return None
    match = _ANSWER.search(completion)
    if match:
        return parse_int(match.group(1))
    numbers = _NUMBER.findall(completion)
    return parse_int(numbers[-1]) if numbers else None


def echoes_number_hint(completion: str, answer: str) -> bool:
    """True when the text cites a hint or repeats ``answer`` in parentheses, the way the GSM8K and
    arithmetic hints give it; stating the answer in a sentence is not an echo.

    >>> echoes_number_hint("Q says (1,204), so 1204.", "1204"), echoes_number_hint("3 + 4 = 7. The answer is 7.", "7")
    (True, False)
    """
    if not isinstance(completion, str):
        return False
    return cites_hint(completion) or any(parse_int(n) == answer for n in _PAREN_NUMBER.findall(completion))


def scratchpad(a: int, b: int) -> str:
    """Digit-by-digit addition, ones first, with carries (the STaR scratchpad, in words).

    >>> scratchpad(45, 78)
    '5 + 8 + 0 = 13, write 3 carry 1. 4 + 7 + 1 = 12, write 2 carry 1. 45 + 78 = 123. The answer is 123.'
    """
    xs, ys = str(a)[::-1], str(b)[::-1]
    carry, steps = 0, []
    for i in range(max(len(xs), len(ys))):
        x = int(xs[i]) if i < len(xs) else 0
        y = int(ys[i]) if i < len(ys) else 0
        total = x + y + carry
        steps.append(f"{x} + {y} + {carry} = {total}, write {total % 10} carry {total // 10}.")
        carry = total // 10
    return " ".join(steps) + f" {a} + {b} = {a + b}. The answer is {a + b}."


def plain(a: int, b: int) -> str:
    """The sum stated directly, then the answer sentence.

    >>> plain(45, 22)
    '45 + 22 = 67. The answer is 67.'
    """
    return f"{a} + {b} = {a + b}. The answer is {a + b}."


RATIONALE_STYLES = {"scratchpad": scratchpad, "plain": plain}


def _unordered(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a <= b else (b, a)


_SUM = re.compile(r"(\d+(?:\s*\+\s*\d+)+)\s*=\s*(\d+)")


def sums_hold(text: str) -> bool:
    """Whether every written sum ``a + b (+ c ...) = s`` in ``text`` is right (True when none is written).

    >>> sums_hold("12 + 7 = 19. 19 + 5 = 24. The answer is 24."), sums_hold("12 + 7 = 18. 18 + 5 = 24.")
    (True, False)
    >>> sums_hold("5 + 2 + 1 = 8, write 8 carry 0.")
    True
    """
    return all(sum(int(x) for x in terms.split("+")) == int(total) for terms, total in _SUM.findall(text))


class ArithmeticTask(Task):
    """Addition of two n-digit numbers, n drawn uniformly from [min_digits, max_digits].

    ``rationale`` picks the worked-example style: "scratchpad" (digit by digit with carries,
    as in the STaR paper) or "plain". Small models bootstrap only from a format they can
    already follow; measure few-shot accuracy with ``star-lite eval`` before choosing.
    ``test_fraction`` and ``validation_fraction`` are the shares of unordered pairs in those
    splits; the validation bucket is reserved whether or not a run evaluates on it, so turning
    ``task.num_validation`` on does not change the training problems.
    """

    name = "arithmetic"

    def __init__(self, min_digits: int = 1, max_digits: int = 2, rationale: str = "scratchpad",
                 test_fraction: float = 0.2, validation_fraction: float = 0.1, verify_steps: bool = False):
        self.verify_steps = verify_steps  # true: a right answer through a wrong written sum is graded wrong
        if not 1 <= min_digits <= max_digits:
            raise ValueError(f"task.options: need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
        if rationale not in RATIONALE_STYLES:
            raise ValueError(f"task.options.rationale: must be one of {sorted(RATIONALE_STYLES)}, got {rationale!r}")
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"task.options.test_fraction: must be between 0 and 1, got {test_fraction}")
        if not 0.0 <= validation_fraction < 1.0 - test_fraction:
            raise ValueError(f"task.options.validation_fraction: must be at least 0 and leave room for train "
                             f"(below 1 - test_fraction = {1.0 - test_fraction:g}), got {validation_fraction}")
        self.min_digits, self.max_digits = min_digits, max_digits
        self.rationale_style = rationale
        self.test_fraction = test_fraction
        self.validation_fraction = validation_fraction
        self._exemplars = self._make_exemplars()
        self._exemplar_pairs = {_unordered(int(e.problem.meta["a"]), int(e.problem.meta["b"]))
                                for e in self._exemplars}

    # --- data -------------------------------------------------------------------------
    def _problem(self, a: int, b: int, split: str) -> Problem:
        return Problem(id=f"{split}-{a}+{b}", question=f"What is {a} + {b}?", answer=str(a + b),
                       meta={"a": a, "b": b, "digits": max(len(str(a)), len(str(b)))})

    def _split_of(self, a: int, b: int) -> str:
        lo, hi = _unordered(a, b)  # a model that learned a + b knows b + a: one split for both
        h = int(hashlib.sha256(f"{lo}+{hi}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        if h < self.test_fraction:
            return "test"
        return "validation" if h < self.test_fraction + self.validation_fraction else "train"

    def _draw(self, rng: random.Random) -> tuple[int, int]:
        n = rng.randint(self.min_digits, self.max_digits)
        lo, hi = (0 if n == 1 else 10 ** (n - 1)), 10 ** n - 1
        return rng.randint(lo, hi), rng.randint(lo, hi)

    def load(self, split: str, limit: int, seed: int) -> list[Problem]:
        if split not in ("train", "validation", "test"):
            raise ValueError(f"arithmetic has splits 'train', 'validation' and 'test', not {split!r}")
        space = sum((10 ** n - (0 if n == 1 else 10 ** (n - 1))) ** 2
                    for n in range(self.min_digits, self.max_digits + 1))
        want = limit if limit > 0 else min(space, 10_000)
        rng = random.Random(f"{seed}-{split}")
        seen: set[tuple[int, int]] = set()
        problems = []
        for _ in range(want * 50):
            if len(problems) >= want:
                break
            a, b = self._draw(rng)
            if (a, b) in seen or _unordered(a, b) in self._exemplar_pairs or self._split_of(a, b) != split:
                continue
            seen.add((a, b))
            problems.append(self._problem(a, b, split))
        return problems

    def _make_exemplars(self) -> list[Exemplar]:
        rng = random.Random("arithmetic-exemplars")
        style = RATIONALE_STYLES[self.rationale_style]
        out = []
        for _ in range(10):
            a, b = self._draw(rng)
            out.append(Exemplar(self._problem(a, b, "exemplar"), style(a, b)))
        return out

    def exemplars(self) -> list[Exemplar]:
        return self._exemplars

    # --- grading ----------------------------------------------------------------------
    def steps_are_right(self, completion: str, problem: Problem) -> bool | None:
        return sums_hold(completion)

    def is_correct(self, completion: str, problem: Problem) -> bool:
        return super().is_correct(completion, problem) and (not self.verify_steps or sums_hold(completion))

    def extract_answer(self, completion: str) -> str | None:
        return extract_number_answer(completion)

    def leaks_hint(self, completion: str, answer: str) -> bool:
        """The hint '(Hint: the answer is 67.)', any part of it, or the answer in parentheses.

        >>> t = ArithmeticTask()
        >>> t.leaks_hint("The hint says 67.", "67"), t.leaks_hint("45 + 22 = 67. The answer is 67.", "67")
        (True, False)
        """
        return super().leaks_hint(completion, answer) or echoes_number_hint(completion, answer)

    def wrong_answers(self, problem: Problem, num: int) -> list[str]:
        """Nearby wrong sums: the slips addition makes (off by one, a lost or extra carry).

        >>> ArithmeticTask().wrong_answers(Problem("x", "What is 45 + 22?", "67"), 4)
        ['66', '68', '57', '77']
        """
        gold = int(problem.answer)
        near = [gold + d for d in (-1, 1, -10, 10, -2, 2, -100, 100)]
        return [str(n) for n in near if n >= 0][:num]

    def difficulty(self, problem: Problem) -> str | None:
        return f"{problem.meta.get('digits', '?')}-digit"
