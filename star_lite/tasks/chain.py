"""Chain addition: three small numbers added left to right, where the rationale carries the work.

    Q: What is 12 + 7 + 5?
    A: 12 + 7 = 19. 19 + 5 = 24. The answer is 24.      (rationale: "chain")
    A: The answer is 24.                                (what direct fine-tuning trains on)

The intermediate sum is written down in the rationale and nowhere else, so a model that
reasons step by step has something a model that answers directly lacks: this is the task on
which STaR and direct fine-tuning can differ. Sized for the embedded 135M model (docs/comparison.md).

Problems that are reorderings of one another (12 + 7 + 5, 5 + 12 + 7) have the same answer,
so the split goes by the multiset of terms: a reordering never crosses from train to test.
"""

from __future__ import annotations

import hashlib
import random

from .arithmetic import extract_number_answer, sums_hold
from .base import Exemplar, Problem, Task

SPLITS = ("train", "validation", "test")


def chain(terms: list[int]) -> str:
    """The running sum, one step per term.

    >>> chain([12, 7, 5])
    '12 + 7 = 19. 19 + 5 = 24. The answer is 24.'
    """
    total, steps = terms[0], []
    for t in terms[1:]:
        steps.append(f"{total} + {t} = {total + t}.")
        total += t
    return " ".join(steps) + f" The answer is {total}."


def direct(terms: list[int]) -> str:
    """The answer alone.

    >>> direct([12, 7, 5])
    'The answer is 24.'
    """
    return f"The answer is {sum(terms)}."


RATIONALE_STYLES = {"chain": chain, "direct": direct}


class ChainAdditionTask(Task):
    """``num_terms`` numbers in [0, max_value] added left to right.

    ``rationale`` picks the worked examples' style: "chain" (each partial sum written out) or
    "direct" (the answer alone, the few-shot direct baseline). Splits are drawn by a hash of
    the sorted terms: ``test_fraction`` of multisets are test, ``validation_fraction`` validation.
    """

    name = "chain_addition"

    def __init__(self, num_terms: int = 3, max_value: int = 19, rationale: str = "chain",
                 test_fraction: float = 0.3, validation_fraction: float = 0.1, num_exemplars: int = 8,
                 verify_steps: bool = False):
        self.verify_steps = verify_steps  # true: a right answer through a wrong partial sum is graded wrong
        if num_terms < 2:
            raise ValueError(f"task.options.num_terms: need at least 2, got {num_terms}")
        if max_value < 2:
            raise ValueError(f"task.options.max_value: need at least 2, got {max_value}")
        if rationale not in RATIONALE_STYLES:
            raise ValueError(f"task.options.rationale: must be one of {sorted(RATIONALE_STYLES)}, got {rationale!r}")
        if not (0 < test_fraction and 0 <= validation_fraction and test_fraction + validation_fraction < 1):
            raise ValueError("task.options: need test_fraction > 0, validation_fraction >= 0 and their sum < 1, "
                             f"got {test_fraction} and {validation_fraction}")
        self.num_terms, self.max_value = num_terms, max_value
        self.rationale_style = rationale
        self.test_fraction, self.validation_fraction = test_fraction, validation_fraction
        rng = random.Random("chain-exemplars")
        self._exemplars, taken = [], set()
        while len(self._exemplars) < num_exemplars:
            terms = self._draw(rng)
            if tuple(sorted(terms)) in taken:
                continue
            taken.add(tuple(sorted(terms)))
            self._exemplars.append(Exemplar(self._problem(terms, "exemplar"), RATIONALE_STYLES[rationale](terms)))
        self._exemplar_keys = taken  # exemplars' multisets belong to no split

    def _draw(self, rng: random.Random) -> list[int]:
        return [rng.randint(0, self.max_value) for _ in range(self.num_terms)]

    def _problem(self, terms: list[int], split: str) -> Problem:
        text = " + ".join(map(str, terms))
        return Problem(id=f"{split}-{'+'.join(map(str, terms))}", question=f"What is {text}?",
                       answer=str(sum(terms)), meta={"terms": list(terms)})

    def split_of(self, terms: list[int]) -> str:
        """The split of every ordering of ``terms``."""
        key = "+".join(map(str, sorted(terms)))
        h = int(hashlib.sha256(f"chain:{key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        if h < self.test_fraction:
            return "test"
        return "validation" if h < self.test_fraction + self.validation_fraction else "train"

    def load(self, split: str, limit: int, seed: int) -> list[Problem]:
        if split not in SPLITS:
            raise ValueError(f"chain_addition has splits {', '.join(SPLITS)}, not {split!r}")
        space = (self.max_value + 1) ** self.num_terms
        want = limit if limit > 0 else min(space, 10_000)
        rng = random.Random(f"{seed}-{split}")
        seen: set[tuple[int, ...]] = set()
        problems = []
        for _ in range(want * 50):
            if len(problems) >= want:
                break
            terms = self._draw(rng)
            if (tuple(terms) in seen or tuple(sorted(terms)) in self._exemplar_keys
                    or self.split_of(terms) != split):
                continue
            seen.add(tuple(terms))
            problems.append(self._problem(terms, split))
        return problems

    def exemplars(self) -> list[Exemplar]:
        return self._exemplars

    def direct_answer(self, problem: Problem) -> str:
        return direct(problem.meta["terms"])

    def wrong_answers(self, problem: Problem, num: int) -> list[str]:
        """Nearby wrong sums (a slip of one or of ten in a step)."""
        gold = int(problem.answer)
        return [str(gold + d) for d in (-1, 1, -10, 10, -2, 2) if gold + d >= 0][:num]

    def steps_are_right(self, completion: str, problem: Problem) -> bool | None:
        return sums_hold(completion)

    def is_correct(self, completion: str, problem: Problem) -> bool:
        return super().is_correct(completion, problem) and (not self.verify_steps or sums_hold(completion))

    def extract_answer(self, completion: str) -> str | None:
        return extract_number_answer(completion)

    def difficulty(self, problem: Problem) -> str | None:
        """How many of the steps cross a ten (carry): the harder steps for a small model."""
        total, carries = problem.meta["terms"][0], 0
        for t in problem.meta["terms"][1:]:
            carries += (total % 10) + (t % 10) >= 10
            total += t
        return f"{carries} carr{'y' if carries == 1 else 'ies'}"
