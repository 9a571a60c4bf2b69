"""``bitfleet simulate``: N agents and the coordinator's vote on one machine, no broker, no HTTP.

The agents run the agent's own code path (:class:`bitfleet.algorithms.local.LocalJobs`) and
sign real update frames; the coordinator side checks, weighs and tallies them with the
service's own round state (:class:`bitfleet.server.rounds.OpenRound`, the vote caps of
:mod:`bitfleet.server.selection`) and closes each round with :func:`bitfleet.server.closing.vote`.
Only the transports and the store are left out, so a simulated job and a served one with the
same seed and data end in the same model.
"""
