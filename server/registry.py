"""The agent registry: enrollment, revocation, presence, and who is online now.

Transport-free: the REST API, the HTTP fleet routes and the MQTT bridge all call it. An
agent's id is also its broker login, so every change of credentials is announced to the
listeners (the broker's password file).

Presence is soft state that every status message and HTTP poll reports: it is gathered in
memory and written in one transaction per engine tick (or before anyone reads who is
online), not one per message: at 1,000 agents those writes were half the coordinator's
store time. A crash loses only presence reported since the last tick, which agents report
again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from bitfleet.protocol import RESERVED_AGENT_IDS, check_agent_id
from bitfleet.server.errors import NotFound
from bitfleet.server.fanout import Fanout
from bitfleet.server.state import StateStore
from bitfleet.server.state.base import AgentRecord, Presence, StoreError

log = logging.getLogger("bitfleet.registry")


class AgentRegistry:
    def __init__(
        self,
        store: StateStore,
        fanout: Fanout,
        clock: Callable[[], float],
        presence_timeout_s: float,
    ) -> None:
        self._store = store
        self._fanout = fanout
        self._clock = clock
        self._presence_timeout_s = presence_timeout_s
        # Ids no agent may enroll under (the coordinator adds its broker user).
        self.reserved_agent_ids: set[str] = set(RESERVED_AGENT_IDS)
        self.credential_listeners: list[Callable[[], None]] = []
        self._reported: dict[str, Presence] = {}  # since the last flush, latest per agent
        self._reported_lock = threading.Lock()

    def enroll(self, agent_id: str, secret: str) -> AgentRecord:
        """Enroll a new agent; reserved ids (the coordinator's broker user among them) are
        refused, since an agent's id is also its broker login."""
        check_agent_id(agent_id, self.reserved_agent_ids)
        agent = self._store.create_agent(agent_id, secret)
        self._credentials_changed()
        log.info("agent %s enrolled", agent_id)
        return agent

    def revoke(self, agent_id: str) -> AgentRecord:
        """Revoke an agent: its tasks are withdrawn, its uploads and logins refused."""
        self.get(agent_id)
        self._store.revoke_agent(agent_id)
        self._fanout.withdraw([agent_id])
        self._credentials_changed()
        log.info("agent %s revoked", agent_id)
        return self.get(agent_id)

    def get(self, agent_id: str) -> AgentRecord:
        agent = self._store.get_agent(agent_id)
        if agent is None:
            raise NotFound(f"agent {agent_id!r} does not exist")
        return agent

    def exists(self, agent_id: str) -> bool:
        """Enrolled, revoked or not (provisioning enrolls only the missing ones)."""
        return self._store.get_agent(agent_id) is not None

    def all(self) -> list[tuple[AgentRecord, bool]]:
        """Every agent and whether it is online now."""
        online = set(self.online())  # flushes presence first
        return [(agent, agent.agent_id in online) for agent in self._store.list_agents()]

    def secret(self, agent_id: str) -> str | None:
        """The secret of an enrolled, unrevoked agent."""
        return self._store.agent_secret(agent_id)

    def online(self) -> list[str]:
        """Agents online now: an MQTT agent until its broker says it left, an HTTP agent
        while it polls within the presence timeout."""
        self.flush_presence()
        cutoff = self._clock() - self._presence_timeout_s
        return [
            agent.agent_id
            for agent in self._store.list_agents()
            if not agent.revoked
            and agent.online
            and (agent.transport == "mqtt" or (agent.last_seen or 0) >= cutoff)
        ]

    def presence(
        self, agent_id: str, online: bool, transport: str, capabilities: dict[str, Any] | None
    ) -> bool:
        """Note presence of an enrolled agent (written at the next flush); False for
        unknown or revoked ones."""
        if self._store.agent_secret(agent_id) is None:
            return False
        with self._reported_lock:
            earlier = self._reported.get(agent_id)
            if capabilities is None and earlier is not None:
                capabilities = earlier.capabilities
            self._reported[agent_id] = Presence(
                agent_id, online, transport, self._clock(), capabilities
            )
        return True

    def flush_presence(self) -> None:
        """Write the presence noted since the last flush, in one transaction; if the store
        refuses, keep it (newer reports win) for the next flush and raise."""
        with self._reported_lock:
            reports, self._reported = self._reported, {}
        if not reports:
            return
        try:
            self._store.record_presence(list(reports.values()))
        except StoreError:
            with self._reported_lock:
                self._reported = {**reports, **self._reported}
            raise

    def _credentials_changed(self) -> None:
        for listener in self.credential_listeners:
            listener()
