"""``python -m atrous`` (and ``torchrun -m atrous``) runs the ``atrous`` command."""

import sys

from atrous.cli import main

sys.exit(main())
