"""Reproduce docs/images/dashboard.png: a real job on a live coordinator, in headless Chromium.

Starts a coordinator (TLS, throwaway CA) with three in-process agents training on IID
shares of digits over HTTP, runs an 8-round bit-flip job, and screenshots the job's
dashboard page once it has finished. Needs the dev extra (playwright) and chromium
(scripts/install-system-deps.sh). Usage: .venv/bin/python scripts/dashboard-screenshot.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from bitfleet.edge_agent.runtime import AgentRuntime  # noqa: E402
from bitfleet.edge_agent.transports.http import HttpTransport  # noqa: E402
from bitfleet.server.tlsca import create_ca  # noqa: E402
from tests.cluster import Coordinator  # noqa: E402
from tests.manual import JOB, enroll, running, shards  # noqa: E402
from tests.test_dashboard import CHROMIUM, FLAGS  # noqa: E402

OUT = ROOT / "docs" / "images" / "dashboard.png"


def main() -> int:
    with tempfile.TemporaryDirectory() as temp:
        ca = create_ca(Path(temp) / "tls")
        coordinator = Coordinator(Path(temp) / "coordinator", tls=ca).start()
        try:
            pairs = enroll(coordinator, 3)
            runtimes = [
                AgentRuntime(
                    agent_id,
                    secret,
                    x,
                    y,
                    HttpTransport(
                        coordinator.url, agent_id, secret, poll_s=0.2, ca_file=str(ca.ca)
                    ),
                )
                for (agent_id, secret), (x, y) in zip(pairs, shards(3), strict=True)
            ]
            job = {**JOB, "name": "digits-binary", "rounds": 8, "agents_per_round": 3}
            with running(runtimes):
                job_id = coordinator.api.request("POST", "/api/v1/jobs", json_body=job).json()["id"]
                finished = coordinator.wait_for(job_id, timeout=600)
            print(f"{job_id}: {finished['status']}, {len(finished['metrics'])} rounds")
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
                page = browser.new_context(ignore_https_errors=True).new_page()
                page.goto(f"{coordinator.url}/ui/")
                page.fill("#token", coordinator.token)
                page.click("#sign-in button[type=submit]")
                page.goto(f"{coordinator.url}/ui/#/jobs/{job_id}")
                page.wait_for_selector("#job-tables table")
                OUT.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(OUT), full_page=True)
                browser.close()
        finally:
            coordinator.kill()
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
