"""``python -m edge_agent`` runs ``bitfleet-agent``."""

import sys

from edge_agent.cli import main

sys.exit(main())
