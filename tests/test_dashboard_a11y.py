"""The dashboard for keyboard and screen-reader users, in a real headless Chromium against a
real farm: axe-core (the accessibility engine browsers' devtools use) finds nothing on any
page, filled with real jobs; a skip link, Tab through the submit form and Enter to submit,
queue rows and gallery tiles opened from the keyboard, controls found by their accessible
names, a refused field marked invalid with its message, a job's final status announced."""

from __future__ import annotations

import re

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import expect

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
ME = "a11y-admin"  # the admin signed in; the jobs here are its own


@pytest.fixture(scope="module")
def site(farm, browser):  # noqa: F811
    """An admin's dashboard with jobs in every state the pages draw: succeeded (with an image
    in the gallery), failed, and one still waiting (a GPU job; the farm has none), which an
    admin may cancel or reprioritise from its row."""
    account_token(farm.redis, ME, "admin")  # and a token to show on the admin page
    done = farm.submit(owner=ME, prompt="a lighthouse for everyone", **TINY)
    failed = farm.submit(owner=ME, **{**TINY, "model": "broken-model"}, prompt="a model that fails")
    waiting = farm.submit(owner=ME, prompt="a job that waits for a gpu", hardware="gpu", **TINY)
    assert farm.wait(done["id"])["status"] == "succeeded"
    assert farm.wait(failed["id"])["status"] == "failed"
    page = sign_in(farm, browser, ME, "admin")
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


def focused(page) -> str:
    """The focused element as a test names it: its tag, and its name attribute or id."""
    return page.evaluate(
        "(() => { const e = document.activeElement;"
        " return `${e.tagName.toLowerCase()}:${e.name || e.id || e.textContent.trim()}`; })()"
    )


def tab_until(page, wanted: str, limit: int = 120) -> list[str]:
    """Press Tab until `wanted` (as `focused` names it) has the focus; what it passed."""
    passed = []
    for _ in range(limit):
        page.keyboard.press("Tab")
        passed.append(focused(page))
        if passed[-1] == wanted:
            return passed
    raise AssertionError(f"Tab never reached {wanted}; it went {passed}")


def test_the_skip_link_is_the_first_tab_stop_shows_and_moves_the_focus_to_the_page(site):
    page = site.open("queue")
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    assert skip.evaluate("e => e === document.activeElement")
    box = skip.bounding_box()
    assert box and box["y"] >= 0 and box["width"] > 0  # on screen while it has the focus
    page.keyboard.press("Enter")
    assert focused(page) == "main:main"
    page.keyboard.press("Tab")  # and on from there: the page's first control, not the nav
    assert page.evaluate("document.querySelector('main').contains(document.activeElement)")
    page.context.close()


def test_a_job_is_submitted_with_the_keyboard_alone(site):
    page = site.open("submit")
    passed = tab_until(page, "textarea:prompt")
    assert passed[0] == "a:Skip to content"
    assert "input:kind" in passed  # the job kinds come first: arrows move between them
    page.keyboard.type("a lighthouse typed on a keyboard")
    tab_until(page, "select:model")
    page.keyboard.type("demo-sd")  # a closed select's type-ahead
    assert page.input_value("#model-select") == "demo-sd15"
    for name, value in (("width", "64"), ("height", "64"), ("steps", "1")):
        tab_until(page, f"input:{name}")
        page.keyboard.press("Control+A")
        page.keyboard.type(value)
    passed = tab_until(page, "button:render")
    assert "select:priority" in passed and "select:hardware" in passed
    page.keyboard.press("Enter")
    said = page.get_by_role("status").filter(has_text="Submitted")
    said.wait_for()
    job_id = said.get_by_role("link").first.get_attribute("data-job-id")
    assert site.farm.job(job_id)["spec"]["prompt"] == "a lighthouse typed on a keyboard"
    assert site.farm.wait(job_id)["status"] == "succeeded"
    page.context.close()


def test_a_refused_field_is_invalid_described_by_its_message_and_has_the_focus(site):
    page = site.open("submit")
    steps = page.get_by_role("spinbutton", name="Steps", exact=True)
    page.get_by_role("textbox", name="Prompt", exact=True).fill("a refused field, then put right")
    steps.fill("500")
    page.get_by_role("button", name="Render").press("Enter")
    page.locator(".field-error[data-for=steps]").wait_for()  # the server's 422 names the field
    assert steps.get_attribute("aria-invalid") == "true"
    expect(steps).to_have_accessible_description(re.compile("must be at most 150"))
    expect(steps).to_be_focused()
    steps.fill("2")  # put right: its marks go with the next submission
    page.get_by_role("button", name="Render").click()
    page.get_by_role("status").filter(has_text="Submitted").wait_for()
    assert steps.get_attribute("aria-invalid") is None
    expect(steps).to_have_accessible_description("")
    page.context.close()


def test_a_queue_row_and_a_gallery_tile_open_with_the_keyboard(site):
    page = site.tab("queue")
    page.goto(site.farm.url + "/?scope=me")
    short = site.job[-8:]
    link = page.get_by_role("link", name=f"Job {short}")
    tab_until(page, f"a:{short}", limit=300)
    assert link.evaluate("e => e === document.activeElement")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/jobs/{site.job}")
    image = page.get_by_role("img", name="a lighthouse for everyone (image 1 of 1)")
    image.wait_for()

    site.load(page, "gallery")
    tile = page.get_by_role("link", name=f"a lighthouse for everyone, by {ME}").first
    tile.wait_for()
    tile.focus()
    page.keyboard.press("Enter")
    page.wait_for_url("**/jobs/*")
    page.context.close()


def test_a_jobs_finish_is_announced_on_its_page_and_in_the_queue_not_its_progress(site):
    """The farm's one worker drained, a job waits; two tabs open on it (its page, my queue);
    the worker back, it runs: each tab's status region says it succeeded, and said nothing
    but its changes of status."""
    farm = site.farm
    worker = farm.cpu_worker()
    farm.client.drain(worker)
    try:
        job = farm.submit(owner=ME, prompt="announced when done", **{**TINY, "steps": 6})
        short = job["id"][-8:]
        context = site.browser.new_context(storage_state=site.signed_in, **LAPTOP)
        tabs = [context.new_page(), context.new_page()]
        tabs[0].goto(farm.url + f"/jobs/{job['id']}")
        tabs[0].locator("#job-status", has_text="queued").wait_for()
        tabs[1].goto(farm.url + "/?scope=me")
        tabs[1].locator(f"#job-rows tr[data-job-id='{job['id']}'][data-status=queued]").wait_for()
        for tab in tabs:  # every sentence the region is given, not only the last
            tab.evaluate(
                "window.said = []; new MutationObserver(() => said.push("
                "document.getElementById('announce').textContent)).observe("
                "document.getElementById('announce'), {childList: true, characterData: true,"
                " subtree: true})"
            )
        # the queue names the job's own controls
        tabs[1].get_by_role("button", name=f"Cancel job {short}").wait_for()
        tabs[1].get_by_role("combobox", name=f"Priority of job {short}").wait_for()
    finally:
        farm.client.drain(worker, False)
    assert farm.wait(job["id"])["status"] == "succeeded"
    for tab, started in zip(tabs, ("running", "started"), strict=True):
        tab.get_by_role("status").filter(has_text=f"Job {short} succeeded").wait_for()
        said = tab.evaluate("said")
        allowed = {f"Job {short} {started}", f"Job {short} succeeded"}
        assert said and set(said) <= allowed, said  # no progress steps, nothing else
    context.close()


def test_reduced_motion_stops_the_gallerys_caption_fading_in(site):
    page = site.tab("gallery")
    page.emulate_media(reduced_motion="reduce")
    site.load(page, "gallery")
    caption = page.locator("#grid .tile .caption").first
    assert caption.evaluate("e => getComputedStyle(e).transitionDuration") == "0s"
    page.emulate_media(reduced_motion="no-preference")
    assert caption.evaluate("e => getComputedStyle(e).transitionDuration") != "0s"
    page.context.close()
