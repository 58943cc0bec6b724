"""The Task interface: one object owns a task's data, prompts, hint and grader.

The same ``is_correct`` filters STaR rationales, scores evaluation and (in comparisons)
serves as the RL reward, so every method is judged by the same code.
"""

from __future__ import annotations

import re
import dataclasses
from dataclasses import dataclass, field
from typing import Any

QUESTION_PREFIX = "Q: "
ANSWER_PREFIX = "A:"

# A rationale that mentions the hint, or says the answer was handed to it, has not reasoned
# to the answer; the paper's rationalization is trained "as if found unaided".
_CITES_HINT = re.compile(r"\bhint(s|ed)?\b|\b(given|told|provided)\s+(that\s+)?the\s+answer\s+(is|was)\b"
                         r"|\bthe\s+answer\s+(is|was)\s+(given|provided|told)\b", re.IGNORECASE)


def cites_hint(completion: str) -> bool:
    """True when the text talks about a hint or an answer it was given.

    >>> cites_hint("The hint says 67."), cites_hint("45 + 22 = 67. The answer is 67.")
    (True, False)
    """
    return bool(_CITES_HINT.search(completion))


@dataclass(frozen=True)
class Problem:
    """One question with its gold answer (in the task's canonical form)."""

    id: str
    question: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Exemplar:
    """A worked example for the few-shot prompt: a problem and a rationale that ends in its answer."""

    problem: Problem
    rationale: str


class Task:
    """Base class. Subclasses set ``name`` and implement ``load``, ``exemplars``, ``extract_answer``.

    Prompt layout (shared by every built-in task)::

        Q: <question>            <- format_question(problem, hint=...)
        A: <rationale>           <- the completion the model writes and is trained on
        <blank line>
    """

    name: str = "task"
    stop_strings: tuple[str, ...] = ("\n\n", "\nQ:")

    # --- data -------------------------------------------------------------------------
    def load(self, split: str, limit: int, seed: int) -> list[Problem]:
        """Problems of ``split`` ("train", "validation" or "test"); at most ``limit`` (0 = all), chosen
        by ``seed``. The three splits are disjoint; validation is what early stopping and choosing
        an iteration look at, so test accuracy is only ever reported."""
        raise NotImplementedError

    def exemplars(self) -> list[Exemplar]:
        """Worked examples for the few-shot prompt."""
        raise NotImplementedError

    def hint_exemplars(self) -> list[Exemplar]:
        """Worked examples whose question carries the hint (rationalization prompt)."""
        return self.exemplars()

    # --- prompts ----------------------------------------------------------------------
    def format_hint(self, problem: Problem, answer: str | None = None) -> str:
        """The question text with ``answer`` (default: the gold answer) given as a hint."""
        return f"{problem.question} (Hint: the answer is {problem.answer if answer is None else answer}.)"

    def format_question(self, problem: Problem, hint: bool = False, hint_answer: str | None = None) -> str:
        if hint and hint_answer is not None:  # a user's format_hint(problem) reads the answer off the problem
            problem = dataclasses.replace(problem, answer=hint_answer)
        question = self.format_hint(problem) if hint else problem.question
        return f"{QUESTION_PREFIX}{question}\n{ANSWER_PREFIX}"

    def format_completion(self, rationale: str) -> str:
        return " " + rationale.strip()

    def few_shot_prefix(self, num: int, hint: bool = False) -> str:
        shots = (self.hint_exemplars() if hint else self.exemplars())[:num]
        return "".join(
            self.format_question(ex.problem, hint=hint) + self.format_completion(ex.rationale) + "\n\n"
            for ex in shots
        )

    def prompt(self, problem: Problem, hint: bool = False, num_few_shot: int = 0,
               hint_answer: str | None = None) -> str:
        """The full prompt: ``num_few_shot`` worked examples, then the question (with hint if asked;
        ``hint_answer`` hints another answer than the gold one, for answer-conditioned rationales)."""
        return (self.few_shot_prefix(num_few_shot, hint)
                + self.format_question(problem, hint=hint, hint_answer=hint_answer))

    def clean_completion(self, text: str) -> str:
        """Cut a raw generation at the first stop string and strip it."""
        cut = len(text)
        for stop in self.stop_strings:
            i = text.find(stop)
            if i != -1:
                cut = min(cut, i)
        return text[:cut].strip()

    def direct_answer(self, problem: Problem) -> str:
        """The answer with no rationale: the target of the direct fine-tuning baseline."""
        return f"The answer is {problem.answer}."

    def remove_hint(self, rationale: str) -> str:
        """Remove hint traces from a rationalized completion so it reads as if found unaided."""
        return rationale

    def leaks_hint(self, completion: str, answer: str) -> bool:
        """True when a rationale written with ``answer`` as a hint gives the hint away (echoes it,
        cites it) instead of reasoning to it; such a rationale is never kept for training.

        Stating the answer is not a leak: every rationale ends in it. Echoing the hint's own
        text, or talking about a hint, is.

        >>> t = Task()
        >>> t.leaks_hint("(Hint: the answer is 67.) The answer is 67.", "67")
        True
        >>> t.leaks_hint("45 + 22 = 67. The answer is 67.", "67")
        False
        """
        if not isinstance(completion, str):
            return False
        try:  # the hint as this task writes it, after an empty question
            marker = self.format_hint(Problem("", "", answer)).strip()
        except Exception:  # a format_hint that needs problem.meta: the task overrides leaks_hint
            marker = ""
        return bool(marker and marker in completion) or cites_hint(completion)

    def wrong_answers(self, problem: Problem, num: int) -> list[str]:
        """Up to ``num`` plausible wrong answers, to condition rationales on (self-motivated
        learning writes rationales for the right answer and for wrong ones). [] = none known:
        the model's own wrong answers are used instead."""
        return []

    # --- grading ----------------------------------------------------------------------
    def extract_answer(self, completion: str) -> str | None:
        """The final answer in canonical form, or None. Must never raise."""
        raise NotImplementedError

    def is_correct(self, completion: str, problem: Problem) -> bool:
        try:
            answer = self.extract_answer(completion)
        except Exception:  # a user's extractor must not kill a run over one odd string
            return False
        return answer is not None and answer == problem.answer

    def steps_are_right(self, completion: str, problem: Problem) -> bool | None:
        """Whether every step the rationale writes holds (not only its final answer); None where the task
        cannot check steps. A right answer reached through a wrong step is a false positive, the failure
        STaR and ReST-EM both name; runs report their share of the rationales they keep or reward."""
        return None

    def is_false_positive(self, completion: str, problem: Problem) -> bool:
        """Graded right, but through a step that does not hold."""
        return self.steps_are_right(completion, problem) is False and self.is_correct(completion, problem)

    def difficulty(self, problem: Problem) -> str | None:
        """A label to group accuracy by (e.g. digit count); None if the task has none."""
        return None
