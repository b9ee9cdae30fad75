"""``python -m reformer_ext``: the demo (see reformer_ext/demo.py, or run with --help)."""

import sys

from .demo import main

sys.exit(main())
