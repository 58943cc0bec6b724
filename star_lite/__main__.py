"""``python -m star_lite`` is the ``star-lite`` command; ``accelerate launch -m star_lite run CONFIG``
runs it in every process."""

import sys

from .cli import main

sys.exit(main())
