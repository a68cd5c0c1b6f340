"""The dashboard in a real headless Chromium: sign in, submit a prompt, see the job and its
image, refused input beside its field, a viewer's pages."""

import shutil

import pytest
import requests

from renderfarm import localfarm
from tests.signin import ensure_account

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=localfarm.CHROMIUM_ARGS)
        yield browser
        browser.close()


def sign_in(farm, browser, name: str, role: str):
    """A fresh browser context signed in as `name` through the login page."""
    accounts = ensure_account(farm.redis, name, role)
    accounts.set_password(name, PASSWORD)
    page = browser.new_context().new_page()
    page.goto(farm.url + "/")
    page.wait_for_url("**/login**")  # not signed in: sent to the login page
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#whoami")
    return page


@pytest.fixture(scope="module")
def page(farm, browser):
    return sign_in(farm, browser, "artist", "member")


def test_the_login_page_refuses_a_wrong_password_and_a_viewer_sees_no_form(farm, browser):
    ensure_account(farm.redis, "looker", "viewer").set_password("looker", PASSWORD)
    farm.submit(model="demo-sd15", prompt="seen by a viewer", width=64, height=64, steps=2)
    page = browser.new_context().new_page()
    page.goto(farm.url + "/login")
    page.fill("input[name=name]", "looker")
    page.fill("input[name=password]", "not the password")
    page.click("button[type=submit]")
    page.locator(".error", has_text="Wrong name or password").wait_for()
    assert page.input_value("input[name=name]") == "looker"  # kept; the password never
    assert page.input_value("input[name=password]") == ""
    viewer = sign_in(farm, browser, "looker", "viewer")
    assert viewer.locator("#whoami").inner_text() == "looker (viewer)"
    assert viewer.locator("#job-form").count() == 0  # the server leaves it out
    viewer.locator("#job-rows tr", has_text="seen by a viewer").wait_for(timeout=30_000)
    assert viewer.locator("button.cancel, button.retry").count() == 0
    nav = viewer.locator("#nav a").all_inner_texts()
    assert "Submit" not in nav and "Admin" not in nav and "Queue" in nav
    assert viewer.goto(farm.url + "/submit").status == 403  # the server decides
    assert viewer.goto(farm.url + "/admin").status == 403
    viewer.goto(farm.url + "/")
    viewer.locator("#job-rows tr", has_text="seen by a viewer").locator("a.job-link").click()
    viewer.wait_for_selector("#job-status:not(:empty)")
    assert viewer.locator("#reuse").count() == 0
    assert viewer.locator("#job-actions button").count() == 0
    viewer.goto(farm.url + "/workers")
    viewer.locator("#worker-rows tr").first.wait_for()
    assert viewer.locator("button.drain, button.undrain").count() == 0
    viewer.click("#logout button")
    viewer.wait_for_url("**/login**")


def submit_form(page) -> str:
    """Press Render on the submit page; the id of the job it made."""
    before = page.locator("#submitted a.job-link").count()
    page.click("#job-form button[type=submit]")
    page.wait_for_function(
        "n => document.querySelectorAll('#submitted a.job-link').length > n"
        " || document.querySelector('.field-error, #form-errors li')",
        arg=before,
    )
    errors = page.locator(".field-error, #form-errors li").all_inner_texts()
    assert not errors, errors
    return page.locator("#submitted a.job-link").first.get_attribute("data-job-id")


def open_submit(farm, page, kind: str = "txt2img"):
    page.goto(farm.url + "/submit")
    page.wait_for_selector("#model-select option[value='demo-sd15']", state="attached")
    page.check(f"input[name=kind][value={kind}]")


def test_submit_from_the_page_and_see_the_image(farm, page):
    open_submit(farm, page)
    page.select_option("#model-select", "demo-sd15")
    page.fill("textarea[name=prompt]", "a paper boat from the browser")
    page.fill("input[name=width]", "64")
    page.fill("input[name=height]", "64")
    page.fill("input[name=steps]", "4")
    page.fill("input[name=seed]", "99")
    job_id = submit_form(page)

    page.goto(farm.url + "/")
    row = page.locator("#job-rows tr", has_text="a paper boat from the browser")
    row.locator("td.status", has_text="succeeded").wait_for(timeout=60_000)
    assert row.get_attribute("data-job-id") == job_id
    row.locator("a.job-link").click()
    page.wait_for_url(f"**/jobs/{job_id}")
    image = page.locator("#images img.full")
    image.wait_for()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth === 64", arg=image.element_handle()
    )
    assert "Seed: 99" in page.locator("#parameters").inner_text()
    job = farm.job(job_id)
    assert job["spec"]["seed"] == 99 and job["spec"]["prompt"] == "a paper boat from the browser"


def test_a_refused_submission_shows_the_error_beside_the_field_and_keeps_the_input(farm, page):
    open_submit(farm, page)
    page.fill("textarea[name=prompt]", "too many steps")
    page.fill("input[name=steps]", "500")
    page.click("#job-form button[type=submit]")
    error = page.locator(".field-error[data-for=steps]")
    error.wait_for()
    assert "must be at most 150" in error.inner_text()
    # beside its field: the error follows the steps input in the same label
    assert page.locator("label:has(input[name=steps]) .field-error").count() == 1
    assert page.input_value("textarea[name=prompt]") == "too many steps"
    assert page.input_value("input[name=steps]") == "500"
    assert page.locator("#submitted a").count() == 0
    page.goto(farm.url + "/")
    page.wait_for_selector("#job-rows tr")
    assert page.locator("#job-rows tr", has_text="too many steps").count() == 0


def test_the_pages_show_workers_and_cancel_a_waiting_job(farm, page):
    page.goto(farm.url + "/workers")
    page.locator("#worker-rows tr", has_text="cpu").first.wait_for()
    assert page.locator("button.drain").count() == 0  # members do not drain
    open_submit(farm, page)
    page.fill("textarea[name=prompt]", "a job for a gpu that is not there")
    page.fill("input[name=width]", "64")
    page.fill("input[name=height]", "64")
    page.select_option("select[name=hardware]", "gpu")
    submit_form(page)
    page.goto(farm.url + "/")
    row = page.locator("#job-rows tr", has_text="a job for a gpu that is not there")
    row.locator("small.waiting", has_text="waiting for a compatible worker").wait_for()
    row.locator("button.cancel").click()
    row.locator("td.status", has_text="canceled").wait_for()
    assert farm.job(row.get_attribute("data-job-id"))["status"] == "canceled"


def test_a_page_too_high_or_unknown_is_a_page_saying_so(farm, page):
    """A member who follows a link to the admin page, or mistypes an address, sees the
    dashboard (its nav, its sign-out) with the reason, not a bare JSON or Flask error; the
    API still answers JSON."""
    answer = page.goto(farm.url + "/admin")
    assert answer.status == 403
    assert page.title() == "Not allowed · renderfarm"
    assert "needs role admin; you are member" in page.locator("main").inner_text()
    assert page.locator("#whoami").inner_text() == "artist (member)"

    answer = page.goto(farm.url + "/no-such-page")
    assert answer.status == 404
    assert page.title() == "Not found · renderfarm"
    assert "There is no page /no-such-page" in page.locator("main").inner_text()
    page.click("main a[href='/']")
    page.wait_for_selector("#jobs")

    unknown = page.request.get(farm.url + "/api/v1/no-such-route")
    assert unknown.status == 404 and "not found" in unknown.json()["error"]


def test_a_member_manages_its_own_tokens_and_webhook_on_the_account_page(farm, browser):
    member = sign_in(farm, browser, "token-keeper", "member")
    member.click("nav a[href='/account']")
    member.wait_for_url("**/account")
    assert member.locator("#me-role").inner_text() == "member"
    member.locator("#me-hardware", has_text="cpu").wait_for()
    member.locator("#token-rows", has_text="no tokens").wait_for()

    member.fill("#new-token input[name=label]", "my script")
    member.click("#new-token button[type=submit]")
    secret = member.locator("#token-secret")
    secret.wait_for()
    token = secret.inner_text()
    row = member.locator("#token-rows tr", has_text="my script")
    row.wait_for()
    me = requests.get(farm.url + "/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json()["name"] == "token-keeper"
    member.reload()
    assert member.locator("#new-token-secret").is_hidden()  # shown once
    assert token not in member.content()

    row.locator("button.revoke").click()
    member.locator("#token-rows", has_text="no tokens").wait_for()
    gone = requests.get(farm.url + "/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert gone.status_code == 401

    # The server decides (the input's maxlength only mirrors it): a refusal is told beside
    # the form, on the field it names, and no token is made.
    label = member.locator("#new-token input[name=label]")
    label.evaluate("(input, value) => { input.value = value; }", "x" * 201)
    member.click("#new-token button[type=submit]")
    member.locator("#token-message.error", has_text="label: must be at most 200").wait_for()
    assert label.get_attribute("aria-invalid") == "true"
    assert label.get_attribute("aria-describedby") == "token-message"
    assert member.locator("#new-token-secret").is_hidden()
    member.locator("#token-rows", has_text="no tokens").wait_for()
    label.fill("fine")
    member.click("#new-token button[type=submit]")
    member.locator("#token-rows tr", has_text="fine").wait_for()
    assert label.get_attribute("aria-invalid") is None
    assert member.locator("#token-message").inner_text() == ""

    member.fill("#webhook input[name=webhook_url]", "ftp://example.invalid/hook")
    member.click("#webhook button[type=submit]")
    member.locator("#webhook-message.error", has_text="webhook_url").wait_for()

    viewer = sign_in(farm, browser, "token-looker", "viewer")
    viewer.goto(farm.url + "/account")
    viewer.locator("#tokens-card", has_text="for members and above").wait_for()
    assert viewer.locator("#new-token").count() == 0 and viewer.locator("#webhook").count() == 0
