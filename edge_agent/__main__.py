"""``python -m bitfleet.edge_agent`` runs ``bitfleet-agent``."""

import sys

from bitfleet.edge_agent.cli import main

sys.exit(main())
