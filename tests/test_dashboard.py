"""The dashboard in real headless Chromium (Debian's, driven by Playwright) against a live
coordinator with a finished job and a running one: a bad token is refused, the plots show
one point per round, a round that closes appears without a reload, agents and refusals
are listed, the model downloads; a screenshot is written to test-artifacts/."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from bitfleet.frames import MAGIC
from tests.cluster import Coordinator
from tests.manual import JOB, ManualAgent, manual_round

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As the machine's probe starts it: no sandbox as root, and none of Chromium's own traffic.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail("the dashboard tests need chromium: run scripts/install-system-deps.sh")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        launched.close()


def _round(agents: list[ManualAgent], job_id: str, round_index: int) -> None:
    """Each agent uploads its update once it holds the task of this round."""
    for agent in agents:
        deadline = time.monotonic() + 60
        while (task := agent.task()) is None or (task["job_id"], task["round"]) != (
            job_id,
            round_index,
        ):
            assert time.monotonic() < deadline, (
                f"{agent.agent_id} got no task of round {round_index}"
            )
            time.sleep(0.05)
        frame = agent.update(job_id, round_index, False, 10)
        assert agent.upload(job_id, round_index, frame)["accepted"]


def _points(page: Page, chart: str) -> int:
    return int(page.evaluate(f"window.bitfleetDashboard.charts.{chart}.data[0].length"))


def _signed_in(browser: Browser, coordinator: Coordinator, token: str) -> Page:
    context = browser.new_context(ignore_https_errors=True, accept_downloads=True)  # our test CA
    page = context.new_page()
    page.goto(f"{coordinator.url}/ui/")
    page.fill("#token", token)
    page.click("#sign-in button[type=submit]")
    return page


def test_the_dashboard_shows_jobs_live_and_refuses_a_bad_token(
    browser: Browser, http_coordinator: Coordinator
) -> None:
    finished, agents = manual_round(http_coordinator, 2, agents_per_round=2, rounds=2)
    for round_index in range(2):
        _round(agents, finished, round_index)
    assert http_coordinator.wait_for(finished)["status"] == "completed"
    running = http_coordinator.api.request(
        "POST", "/api/v1/jobs", json_body={**JOB, "agents_per_round": 2, "name": "running-job"}
    ).json()["id"]
    _round(agents, running, 0)
    http_coordinator.wait_for(running, round_index=1)
    late = agents[0].upload(running, 0, agents[0].update(running, 1, False, 10))
    assert late["accepted"] is False  # a refusal the dashboard counts

    refused = _signed_in(browser, http_coordinator, "not-the-token")
    expect(refused.locator("#sign-in-error")).to_contain_text("refused")
    expect(refused.locator("#main table")).to_have_count(0)

    page = _signed_in(browser, http_coordinator, http_coordinator.token)
    jobs = page.locator("#main table tbody tr")
    expect(jobs).to_have_count(2)
    expect(page.locator("#main")).to_contain_text("completed")
    expect(page.locator("#main")).to_contain_text("running-job")

    page.goto(f"{http_coordinator.url}/ui/#/jobs/{finished}")
    expect(page.locator("#job-tables table tbody tr")).to_have_count(2)
    assert (_points(page, "accuracy"), _points(page, "bytes")) == (2, 2)
    with page.expect_download() as downloaded:
        page.click("#download")
    assert downloaded.value.suggested_filename == f"{finished}.bfm"
    assert Path(downloaded.value.path()).read_bytes()[:4] == MAGIC

    page.goto(f"{http_coordinator.url}/ui/#/jobs/{running}")
    expect(page.locator("#job-tables table tbody tr")).to_have_count(1)
    assert _points(page, "accuracy") == 1
    expect(page.locator("#job-refusals")).to_have_text("mismatch: 1")
    _round(agents, running, 1)  # the next round closes while the page is open
    expect(page.locator("#job-tables table tbody tr")).to_have_count(2, timeout=30_000)
    assert _points(page, "accuracy") == 2
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-job.png"), full_page=True)

    page.goto(f"{http_coordinator.url}/ui/#/agents")
    rows = page.locator("#main table tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text("online")
    expect(rows.first).to_contain_text("mismatch: 1")  # a0's refused upload
    page.screenshot(path=str(ARTIFACTS / "dashboard-agents.png"), full_page=True)


def test_the_page_loads_nothing_but_its_own_files(
    browser: Browser, http_coordinator: Coordinator
) -> None:
    context = browser.new_context(ignore_https_errors=True)
    page = context.request.get(f"{http_coordinator.url}/ui/")
    assert page.status == 200
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "http://" not in page.text() and "https://" not in page.text()  # no CDN
    for name in ("dashboard.js", "uPlot.iife.min.js", "uPlot-LICENSE.txt"):
        assert context.request.get(f"{http_coordinator.url}/ui/assets/{name}").status == 200
    for name in ("..%2Fapp.py", "index.html", "VENDORED.md"):
        assert context.request.get(f"{http_coordinator.url}/ui/assets/{name}").status == 404
    context.close()
