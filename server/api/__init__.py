"""The coordinator's REST API: control (jobs, agents) for admins, fleet for agents."""
