"""The dashboard in a real headless Chromium, against a real ``hub serve`` on loopback.

Selenium drives the system's ``/usr/bin/chromium`` through ``/usr/bin/chromedriver``;
naming both means Selenium's manager never looks for (or downloads) a browser. The hub
is filled through the real client by three agents. Each test saves screenshots under
its tmp folder, to be looked at.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from autoresearchd.memory.ensue_client import EnsueMemory
from autoresearchd.models import Status
from tests.dashboard_support import HOSTILE, TRACK, Swarm, fill, new_result, source
from tests.hub.support import ORG, HubProcess, hub_process

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
AGENTS = ("alice", "bob", "carol")
WAIT_S = 30.0

pytestmark = pytest.mark.slow


class Served:
    """A hub serving the dashboard, filled by three agents, and their keys."""

    def __init__(self, hub: HubProcess) -> None:
        self.hub = hub
        self.keys = {name: hub.register(name) for name in AGENTS}
        self.swarm: Swarm = anyio.run(self._fill)

    def memory(self, agent: str) -> EnsueMemory:
        return EnsueMemory(self.hub.url, ORG, self.keys[agent], primary_track=TRACK)

    async def _fill(self) -> Swarm:
        memories = {name: self.memory(name) for name in AGENTS}
        for memory in memories.values():
            await memory.__aenter__()
        try:
            return await fill(memories)
        finally:
            for memory in memories.values():
                await memory.__aexit__(None, None, None)

    def publish(self, agent: str, descriptions: list[str], **fields: Any) -> None:
        async def publish() -> None:
            async with self.memory(agent) as memory:
                for text in descriptions:
                    result = new_result(agent, source(0.11), source(0.07), description=text)
                    await memory.publish(result.with_(**fields))

        anyio.run(publish)

    def url(self, path: str = "") -> str:
        return f"{self.hub.url}dashboard/{path}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with hub_process(tmp_path_factory.mktemp("hub"), dashboard="public") as hub:
        yield Served(hub)


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1700"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def column(browser: webdriver.Chrome, table: str, index: int) -> list[str]:
    """The text of one column, read in one script: the page may replace its rows any time."""
    script = (
        "return Array.from(document.querySelectorAll('#' + arguments[0] + ' tr'),"
        " tr => tr.cells[arguments[1]] ? tr.cells[arguments[1]].innerText : '')"
    )
    return list(browser.execute_script(script, table, index))


def severe_logs(browser: webdriver.Chrome) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def test_the_overview_shows_leaderboard_results_and_one_mark_per_result(
    served: Served, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    browser.get(served.url())
    marks = wait_for(
        lambda: browser.find_element(By.ID, "chart").get_attribute("data-marks"), "the chart"
    )
    scored = [r for r in served.swarm.results if r.val_bpb is not None]
    assert int(marks) == len(scored)
    assert browser.find_element(By.ID, "chart").get_attribute("data-kept") == "3"
    assert browser.find_elements(By.CSS_SELECTOR, "#chart canvas")
    assert column(browser, "standings", 0) == ["bob", "carol", "alice"]
    assert column(browser, "standings", 1) == ["3", "0", "0"]
    newest_first = [r.description for r in reversed(served.swarm.results)]
    assert column(browser, "recent", 6) == newest_first
    assert browser.find_element(By.ID, "chart-caption").text.startswith(
        f"{len(scored)} experiments, 3 kept"
    )
    assert severe_logs(browser) == []  # no CSP violation, no script error
    browser.save_screenshot(str(tmp_path / "overview.png"))


def test_a_result_page_shows_its_diff(
    served: Served, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    browser.get(served.url("results?agent=bob&status=keep"))
    browser.find_elements(By.CSS_SELECTOR, "#results td.desc a")[0].click()
    diff = browser.find_element(By.ID, "diff")
    assert [e.text for e in diff.find_elements(By.CSS_SELECTOR, ".del")] == ["-LR = 0.06"]
    assert [e.text for e in diff.find_elements(By.CSS_SELECTOR, ".add")] == ["+LR = 0.07"]
    assert "NVIDIA Test 16GB" in browser.find_element(By.TAG_NAME, "main").text
    browser.save_screenshot(str(tmp_path / "result.png"))


def test_a_hostile_description_stays_text(
    served: Served, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    browser.get(served.url())
    wait_for(lambda: browser.find_element(By.ID, "chart").get_attribute("data-marks"), "chart")
    title = browser.title
    texts = column(browser, "recent", 6)
    assert HOSTILE in texts
    assert browser.title == title and "pwned" not in title
    assert browser.find_elements(By.CSS_SELECTOR, "main img") == []
    assert browser.execute_script("return document.querySelectorAll('main script').length") == 0
    browser.get(served.url("results"))
    assert HOSTILE in column(browser, "results", 6)
    assert "pwned" not in browser.title
    browser.save_screenshot(str(tmp_path / "hostile.png"))


def test_a_new_result_appears_without_a_reload(
    served: Served, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    browser.get(served.url())

    def chart() -> str | None:
        return browser.find_element(By.ID, "chart").get_attribute("data-marks")

    before = int(wait_for(chart, "the chart"))
    browser.execute_script("window.loadedOnce = 'yes'")
    # Enough new results to push the oldest off the bounded list of recent ones.
    news = [f"LR 0.07 → 0.11, try {n}" for n in range(8)]
    served.publish("alice", news, status=Status.DISCARD, val_bpb=2.42)
    wait_for(lambda: column(browser, "recent", 6)[0] == news[-1], "the new rows to appear")
    wait_for(lambda: chart() == str(before + len(news)), "the chart to draw the new results")
    assert column(browser, "recent", 6)[: len(news)] == news[::-1]
    assert browser.execute_script("return window.loadedOnce") == "yes"  # the same page
    assert len(column(browser, "recent", 6)) == 20  # the list stays bounded
    navigations = "return performance.getEntriesByType('navigation').length"
    assert browser.execute_script(navigations) == 1
    assert severe_logs(browser) == []
    browser.save_screenshot(str(tmp_path / "live.png"))
