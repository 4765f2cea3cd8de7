"""``python -m remote_futures``: the ``remote-futures`` command line."""

import sys

from .cli import main

sys.exit(main())
