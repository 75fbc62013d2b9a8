"""``python -m viztools.grading build-exercises|grade ...``."""

import sys

from viztools.grading.cli import main

sys.exit(main())
