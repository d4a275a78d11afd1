"""``python -m distkm.cli``: the ``distkm`` command."""

import sys

from distkm.cli import main

sys.exit(main())
