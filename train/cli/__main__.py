"""``python -m x2ctclip.train.cli``: the ``x2ctclip`` command."""

import sys

from x2ctclip.train.cli.app import main

sys.exit(main())
