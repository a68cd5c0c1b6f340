"""The dashboard's layout in a real headless Chromium: every page is usable on a phone (the nav
on screen, columns stacked, nothing scrolls the page sideways) and on a laptop, a page loads
with no console error and no failed request (the favicon included), and a viewer, who owns no
jobs, is not offered notifications about its jobs."""

from dataclasses import dataclass

import pytest

from tests.signin import account_token
from tests.test_dashboard_browser import browser, sign_in  # noqa: F401

pytestmark = pytest.mark.browser

PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
LAPTOP = {"viewport": {"width": 1280, "height": 800}}

# page -> (its address, what shows once its script has filled it in)
PAGES = {
    "queue": ("/", "#job-rows tr"),
    "submit": ("/submit", "#model-select option[value='demo-sd15']"),
    "job": ("/jobs/{job}", "#job-status:not(:empty)"),
    "gallery": ("/gallery", "#grid .tile"),
    "workers": ("/workers", "#worker-rows tr"),
    "models": ("/models", "#families table"),
    "admin": ("/admin", "#token-rows button.revoke"),
    "account": ("/account", "#me-hardware:not(:empty)"),
    "api docs": ("/api/v1/docs", "#ops .op"),
}


@dataclass
class Site:
    """The farm's dashboard as the tests open it: an admin's cookies (every page is open to
    it) and a finished job, so the queue, the job page and the gallery have something to show."""

    farm: object
    browser: object
    signed_in: dict
    job: str

    def tab(self, name: str, device: dict = LAPTOP):
        """A new browser tab of `device` for page `name`: signed in, but for the login page."""
        state = None if name == "login" else self.signed_in
        return self.browser.new_context(storage_state=state, **device).new_page()

    def load(self, page, name: str) -> None:
        """Open page `name` in `page` and wait until its script has filled it in."""
        path, ready = PAGES.get(name, ("/login", "input[name=password]"))
        page.goto(self.farm.url + path.format(job=self.job))
        page.wait_for_selector(ready, state="attached")

    def open(self, name: str, device: dict = LAPTOP):
        page = self.tab(name, device)
        self.load(page, name)
        return page


@pytest.fixture(scope="module")
def site(farm, browser):  # noqa: F811
    spec = {"prompt": "a lighthouse on a narrow screen", "width": 64, "height": 64, "steps": 2}
    job = farm.submit(model="demo-sd15", **spec)
    assert farm.wait(job["id"])["status"] == "succeeded"
    account_token(farm.redis, "layout-admin", "admin")  # a token to revoke on the admin page
    page = sign_in(farm, browser, "layout-admin", "admin")
    state = page.context.storage_state()
    page.context.close()
    return Site(farm, browser, state, job["id"])


def sideways(page, screen: int) -> str | None:
    """How far the page scrolls sideways on a screen `screen` px wide, if it does (a phone
    zooms out to show a page that is too wide, so its window grows too)."""
    width, view = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    return f"{width} px wide on a {screen} px screen" if max(width, view) > screen else None


def outside(box: dict, frame: dict) -> bool:
    return (
        box["x"] < frame["x"]
        or box["y"] < frame["y"]
        or box["x"] + box["width"] > frame["x"] + frame["width"]
        or box["y"] + box["height"] > frame["y"] + frame["height"]
    )


def overlap(a: dict, b: dict) -> bool:
    return (
        a["x"] < b["x"] + b["width"]
        and b["x"] < a["x"] + a["width"]
        and a["y"] < b["y"] + b["height"]
        and b["y"] < a["y"] + a["height"]
    )


def test_on_a_phone_every_page_fits_the_screen_and_its_nav_is_on_screen(site):
    screen = {"x": 0, "y": 0, **PHONE["viewport"]}
    problems = []
    for name in [*PAGES, "login"]:
        page = site.open(name, PHONE)
        if too_wide := sideways(page, screen["width"]):
            problems.append(f"{name}: {too_wide}")
        for control in page.locator("#nav a, #logout button").all():
            if outside(control.bounding_box(), screen):
                problems.append(f"{name}: {control.inner_text()!r} is off screen")
        page.context.close()
    assert not problems, problems


def test_on_a_phone_the_submit_forms_cards_are_stacked_not_drawn_over_each_other(site):
    page = site.open("submit", PHONE)
    cards = [card for card in page.locator("#job-form .card").all() if card.is_visible()]
    boxes = {card.locator("legend").first.inner_text(): card.bounding_box() for card in cards}
    assert {"Prompt", "Run"} <= set(boxes), boxes
    drawn_over = [(a, b) for a in boxes for b in boxes if a < b and overlap(boxes[a], boxes[b])]
    assert not drawn_over, drawn_over
    prompt = page.locator("textarea[name=prompt]").bounding_box()
    assert prompt["width"] >= 300, prompt  # the prompt box spans the phone's width
    page.context.close()


def test_on_a_laptop_no_page_scrolls_sideways_and_revoke_lies_inside_the_tokens_card(site):
    problems = []
    for name in [*PAGES, "login"]:
        page = site.open(name)
        if too_wide := sideways(page, LAPTOP["viewport"]["width"]):
            problems.append(f"{name}: {too_wide}")
        if name == "admin":
            card = page.locator("#tokens-card").bounding_box()
            for revoke in page.locator("#token-rows button.revoke").all():
                if outside(revoke.bounding_box(), card):
                    problems.append("admin: a Revoke button lies outside the Tokens card")
        page.context.close()
    assert not problems, problems


def watch(page) -> list[str]:
    """What goes wrong in `page` from now on: console errors, failed and refused requests."""
    found = []
    page.on("console", lambda m: m.type == "error" and found.append(m.text))
    page.on("requestfailed", lambda r: found.append(f"{r.url} {r.failure}"))
    page.on("response", lambda r: r.status >= 400 and found.append(f"{r.url} {r.status}"))
    return found


def test_a_page_loads_with_no_console_error_no_failed_request_and_an_icon(site):
    """Headless Chromium shows no tab icon, so the test asks for the icon a browser would:
    the page's <link rel=icon>, else /favicon.ico."""
    problems = []
    for name in [*PAGES, "login"]:
        page = site.tab(name)
        found = watch(page)
        site.load(page, name)
        icon = page.evaluate("(document.querySelector('link[rel~=icon]') || {}).href")
        icon = icon or site.farm.url + "/favicon.ico"
        answer = page.request.get(icon)
        if not answer.ok or not answer.headers["content-type"].startswith("image/"):
            found.append(f"the icon {icon}: {answer.status} {answer.headers['content-type']}")
        problems += [f"{name}: {text}" for text in found]  # before closing aborts requests
        page.context.close()
    assert not problems, problems


def test_a_viewer_is_not_offered_notifications_of_its_jobs(site):
    """A viewer owns no jobs; a member is offered them (the browser has not been asked)."""
    viewer = sign_in(site.farm, site.browser, "layout-viewer", "viewer")
    viewer.goto(site.farm.url + "/")
    viewer.wait_for_selector("#job-rows tr")
    assert viewer.evaluate("Notification.permission") == "default"
    assert viewer.get_by_role("button", name="Notify me").count() == 0
    viewer.context.close()
    member = sign_in(site.farm, site.browser, "layout-member", "member")
    member.get_by_role("button", name="Notify me").wait_for()
    member.context.close()
