"""`python -m dvpnd.daemon`: the same as `dvpnd`."""

import sys

from dvpnd.daemon.core import main

sys.exit(main())
