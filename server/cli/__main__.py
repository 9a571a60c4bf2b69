"""``python -m bitfleet.server.cli`` runs the ``bitfleet`` command."""

import sys

from bitfleet.server.cli import main

sys.exit(main())
