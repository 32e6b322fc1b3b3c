"""``python -m hlm12erc predict ...``: the same as the ``hlm12erc`` console command."""

import sys

from hlm12erc.cli import main

sys.exit(main())
