"""``python -m service.embed`` is ``byol-embed``."""

import sys

from service.embed.cli import main

sys.exit(main())
