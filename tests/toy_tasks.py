"""Tasks for testing the loop on a random tiny model, which never adds correctly.

HashGradedArithmetic grades a completion by a hash of its text: deterministic, and right
for about one completion in two whatever the model, so the loop sees a mix of right,
rationalized and failed problems. It tests the loop's bookkeeping, not arithmetic. NeverRight and
AlwaysRight make a method see no right answer, or only right ones.
"""

import hashlib

from star_lite.tasks import ArithmeticTask


class HashGradedArithmetic(ArithmeticTask):
    def is_correct(self, completion, problem):
        return int(hashlib.md5(f"{problem.id}|{completion}".encode()).hexdigest(), 16) % 2 == 0


class NeverRight(ArithmeticTask):
    def is_correct(self, completion, problem):
        return False


class AlwaysRight(ArithmeticTask):
    def is_correct(self, completion, problem):
        return True
