"""What a person notices on the dashboard's pages, in a real headless Chromium against a
real farm: jobs told apart by their short ids, a refused submission that does not look
accepted, queue standings that follow the events, Back through the queue's pages, when
each job was submitted, a canceled job that is not shown as an error, a reused inpainting
job's images."""

import pytest

from tests.test_dashboard_browser import browser, open_submit, sign_in, submit_form  # noqa: F401

pytestmark = pytest.mark.browser

TINY = {"model": "demo-sd15", "width": 64, "height": 64, "steps": 1}


@pytest.fixture(scope="module")
def page(farm, browser):  # noqa: F811
    return sign_in(farm, browser, "ux-member", "member")


def row(page, job_id: str):
    return page.locator(f"#job-rows tr[data-job-id='{job_id}']")


def test_jobs_submitted_together_have_different_short_ids(farm, page):
    first = farm.submit(owner="ux-member", prompt="twin one", **TINY)
    second = farm.submit(owner="ux-member", prompt="twin two", **TINY)
    assert first["id"][:8] == second["id"][:8]  # the clock's digits: what used to be shown
    page.goto(farm.url + "/?scope=me")
    links = [row(page, job["id"]).locator("a.job-link") for job in (first, second)]
    shown = []
    for link in links:
        link.wait_for()
        shown.append(link.inner_text())
    assert shown[0] != shown[1]
    assert [link.get_attribute("title") for link in links] == [first["id"], second["id"]]

    titles, headings = [], []
    for job in (first, second):
        farm.wait(job["id"])
        page.goto(farm.url + f"/jobs/{job['id']}")
        download = page.locator("#images a.download")
        download.wait_for()
        assert job["id"] in download.get_attribute("download")
        titles.append(page.title())
        headings.append(page.locator("h2 code").inner_text())
    assert titles[0] != titles[1] and headings[0] != headings[1]
    assert headings == shown  # the same short form on every page


def test_submitted_links_of_two_jobs_differ(farm, page):
    shown, ids = [], []
    for prompt in ("submitted one", "submitted two"):
        open_submit(farm, page)
        page.select_option("#model-select", "demo-sd15")
        page.fill("textarea[name=prompt]", prompt)
        for name, value in (("width", "64"), ("height", "64"), ("steps", "1")):
            page.fill(f"input[name={name}]", value)
        ids.append(submit_form(page))
        shown.append(page.locator("#submitted a.job-link").first.inner_text())
    assert shown[0] != shown[1]
    for job_id in ids:
        farm.wait(job_id)


def test_a_refused_submission_after_an_accepted_one_does_not_look_accepted(farm, page):
    open_submit(farm, page)
    page.select_option("#model-select", "demo-sd15")
    page.fill("textarea[name=prompt]", "accepted, then refused")
    for name, value in (("width", "64"), ("height", "64"), ("steps", "1")):
        page.fill(f"input[name={name}]", value)
    job_id = submit_form(page)
    assert page.locator("#submitted", has_text="Submitted").is_visible()
    page.fill("input[name=width]", "100000")
    page.click("#job-form button[type=submit]")
    page.locator(".field-error[data-for=width]").wait_for()
    assert page.locator("#submitted").inner_text() == ""
    assert page.input_value("input[name=width]") == "100000"  # the form keeps what was typed
    farm.wait(job_id)
