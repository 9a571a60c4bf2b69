"""``python -m server.cli`` runs the ``bitfleet`` command."""

import sys

from server.cli import main

sys.exit(main())
