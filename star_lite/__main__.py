"""``python -m star_lite`` is the ``star-lite`` command; ``accelerate launch -m star_lite run CONFIG``
runs it in every process."""

import sys

from .cli import main

if __name__ == "__main__":  # not again in a comparison's worker processes
    sys.exit(main())
