"""``python -m viztools``: the same as the ``viztools`` command."""

import sys

from viztools.cli import main

sys.exit(main())
