"""``python -m async_batchstate.cli``: the same as the ``async-batchstate`` command."""

import sys

from . import main

sys.exit(main())
