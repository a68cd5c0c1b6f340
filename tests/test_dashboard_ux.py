"""What a person notices on the dashboard's pages, in a real headless Chromium against a
real farm: jobs told apart by their short ids, a refused submission that does not look
accepted, queue standings that follow the events, Back through the queue's pages, when
each job was submitted, a canceled job that is not shown as an error, a reused inpainting
job's images."""

import base64
import io
import re
import shutil
import time

import pytest
from PIL import Image

from shared.modelstore import LocalModelStore
from tests.signin import ensure_account
from tests.test_dashboard_browser import browser, open_submit, sign_in, submit_form  # noqa: F401

pytestmark = pytest.mark.browser

TINY = {"model": "demo-sd15", "width": 64, "height": 64, "steps": 1}


@pytest.fixture(scope="module")
def page(farm, browser):  # noqa: F811
    return sign_in(farm, browser, "ux-member", "member")


def row(page, job_id: str):
    return page.locator(f"#job-rows tr[data-job-id='{job_id}']")


def stop_the_clock(page) -> None:
    """From now on the page's timers (its polls among them) run only when the test moves
    its clock on: whatever changes on the page then came from the events stream."""
    page.clock.pause_at(page.evaluate("Date.now() / 1000") + 1)  # seconds


def shows_standing(page, farm, job_id: str) -> None:
    """Wait until the job's row shows the queue position the API gives it now."""
    position = farm.job(job_id)["queue_position"]
    row(page, job_id).locator("td.queue", has_text=re.compile(rf"^#{position}\b")).wait_for()


def waiting_for_a_gpu(farm, owner: str, n: int) -> list[str]:
    """`n` jobs of `owner` that wait (the farm has no GPU worker), oldest first."""
    return [
        farm.submit(owner=owner, prompt=f"waits {i}", hardware="gpu", **TINY)["id"]
        for i in range(n)
    ]


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
        headings.append(page.locator("h1 code").inner_text())
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


def test_the_standing_of_waiting_jobs_follows_the_events(farm, browser):  # noqa: F811
    page = sign_in(farm, browser, "ux-standing", "member")
    first, second, third = waiting_for_a_gpu(farm, "ux-standing", 3)
    try:
        page.clock.install()
        page.goto(farm.url + "/?scope=me")
        for job_id in (first, second, third):
            shows_standing(page, farm, job_id)
        stop_the_clock(page)
        farm.client.cancel(first)  # a job ahead leaves
        row(page, first).locator("td.status", has_text="canceled").wait_for()
        shows_standing(page, farm, second)
        shows_standing(page, farm, third)
        page.clock.run_for(1000)
        farm.client.set_priority(third, "high")  # a job moves ahead
        assert farm.job(third)["queue_position"] < farm.job(second)["queue_position"]
        shows_standing(page, farm, third)
        shows_standing(page, farm, second)
    finally:
        for job_id in (first, second, third):
            if farm.job(job_id)["status"] == "queued":
                farm.client.cancel(job_id)
        page.context.close()


def test_a_waiting_job_without_a_reason_from_the_server_still_says_it_waits(farm, page):
    # The dispatcher writes its reason only on each owner's first 20 jobs in line
    # (scheduler/dispatcher.py PER_OWNER): the 22nd has none (the API's `waiting: null`).
    jobs = waiting_for_a_gpu(farm, "ux-member", 22)
    try:
        last = jobs[-1]
        page.goto(farm.url + "/?scope=me&status=queued")
        row(page, jobs[0]).locator("small.waiting", has_text="compatible worker").wait_for()
        assert farm.job(last)["waiting"] is None
        assert row(page, last).locator("small.waiting").inner_text() == "waiting its turn"
        page.goto(farm.url + f"/jobs/{last}")
        page.locator("#job-waiting", has_text="waiting its turn").wait_for()
    finally:
        for job_id in jobs:
            farm.client.cancel(job_id)


def test_back_and_forward_walk_the_queue_pages_and_filters(farm, page):
    ensure_account(farm.redis, "ux-pager")
    batch = farm.client.submit_batch(
        spec={**TINY, "prompt": "one of many", "hardware": "gpu", "batch_count": 26},
        owner="ux-pager",
    )
    try:
        page.goto(farm.url + "/workers")
        page.goto(farm.url + "/?owner=ux-pager")
        info = page.locator("#page-info")
        info.filter(has_text="page 1 of 2").wait_for()
        page.click("#next")
        info.filter(has_text="page 2 of 2").wait_for()
        assert "page=2" in page.url
        page.go_back()
        info.filter(has_text="page 1 of 2").wait_for()
        assert page.url == farm.url + "/?owner=ux-pager"  # still the queue, page 1
        page.go_forward()
        info.filter(has_text="page 2 of 2").wait_for()
        page.go_back()
        info.filter(has_text="page 1 of 2").wait_for()
        page.select_option("#filters select[name=status]", "running")
        page.locator("#empty").wait_for()
        page.go_back()  # the filter is undone
        info.filter(has_text="page 1 of 2").wait_for()
        assert page.input_value("#filters select[name=status]") == ""
        page.go_back()
        page.wait_for_url("**/workers")
    finally:
        farm.client.cancel_batch(batch["id"])


def test_the_login_page_of_a_signed_in_account_goes_on_to_the_page_asked_for(farm, page):
    page.goto(farm.url + "/login?next=/workers")
    page.wait_for_url(farm.url + "/workers")
    page.locator("#worker-rows").wait_for(state="attached")
    page.goto(farm.url + "/login")
    page.wait_for_url(farm.url + "/")
    page.locator("#job-rows").wait_for(state="attached")


def test_the_queue_says_when_each_job_was_submitted_and_keeps_it_current(farm, browser):  # noqa: F811
    page = sign_in(farm, browser, "ux-clock", "member")
    [job_id] = waiting_for_a_gpu(farm, "ux-clock", 1)
    try:
        page.clock.install()
        page.goto(farm.url + "/?scope=me")
        header = page.locator("#jobs thead th").all_inner_texts()
        assert "SUBMITTED" in [h.upper() for h in header]
        cell = row(page, job_id).locator("td.submitted")
        cell.filter(has_text=re.compile(r"^(just now|\d+ s ago)$")).wait_for()
        assert cell.get_attribute("title").startswith("submitted ")  # the exact time
        page.clock.fast_forward("05:00")
        cell.filter(has_text="5 min ago").wait_for()
    finally:
        farm.client.cancel(job_id)
        page.context.close()


COLOUR = "el => getComputedStyle(el).color"
ERROR_COLOUR = (
    "() => { const probe = document.createElement('span'); probe.className = 'error';"
    " document.body.append(probe); const c = getComputedStyle(probe).color; probe.remove();"
    " return c; }"
)


def test_a_canceled_job_is_not_shown_as_an_error_a_failed_one_is(farm, page):
    [canceled] = waiting_for_a_gpu(farm, "ux-member", 1)
    farm.client.cancel(canceled)
    failed = farm.submit(owner="ux-member", prompt="fails", **{**TINY, "model": "broken-model"})
    assert farm.wait(failed["id"])["status"] == "failed"
    page.goto(farm.url + "/?scope=me")
    red = page.evaluate(ERROR_COLOUR)
    for job_id, status in ((canceled, "canceled"), (failed["id"], "failed")):
        row(page, job_id).locator("td.status", has_text=status).wait_for()
    canceled_row, failed_row = row(page, canceled), row(page, failed["id"])
    assert canceled_row.locator("td.prompt small").inner_text() == "canceled"
    assert canceled_row.locator("td.status").evaluate(COLOUR) != red
    assert canceled_row.locator("td.prompt small").evaluate(COLOUR) != red
    assert failed_row.locator("td.status").evaluate(COLOUR) == red
    assert failed_row.locator("td.prompt small").evaluate(COLOUR) == red
    page.goto(farm.url + f"/jobs/{canceled}")
    message = page.locator("#job-error", has_text="canceled")
    message.wait_for()
    assert message.evaluate(COLOUR) != red
    page.goto(farm.url + f"/jobs/{failed['id']}")
    message = page.locator("#job-error", has_text="could not load")
    message.wait_for()
    assert message.evaluate(COLOUR) == red


def data_url(colour) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


LOADED = "img => img.complete && img.naturalWidth"  # the image arrived and decoded


def test_reusing_an_inpainting_job_shows_its_image_and_mask(farm, page):
    job = farm.submit(
        owner="ux-member",
        kind="img2img",
        prompt="repaint the middle",
        init_image=data_url((200, 80, 40)),
        mask=data_url((255, 255, 255)),
        hardware="gpu",
        **TINY,
    )
    try:
        spec = farm.job(job["id"])["spec"]
        page.goto(farm.url + f"/submit?from={job['id']}")
        page.locator("#reused").wait_for()
        assert page.is_checked("input[name=kind][value=inpaint]")
        init = page.locator(".reused-image[data-for=init_image]")
        mask = page.locator(".reused-image[data-for=mask]")
        init.wait_for()
        mask.wait_for()
        assert spec["init_image"] in init.inner_text()
        assert "using the mask of job" in mask.inner_text() and spec["mask"] in mask.inner_text()
        # Both shown: the init image where an uploaded one would be, under the brush (a new
        # mask can be painted on it), the mask in its note.
        for preview in (page.locator("#init-preview"), mask.locator("img")):
            page.wait_for_function(LOADED, arg=preview.element_handle())
        assert page.locator("#paint").is_visible()
        # The job's own page shows what it was given.
        page.goto(farm.url + f"/jobs/{job['id']}")
        figures = page.locator("#inputs figure")
        figures.nth(1).wait_for()
        assert figures.locator("figcaption").all_inner_texts() == ["init image", "mask"]
        for img in figures.locator("img").all():
            page.wait_for_function(LOADED, arg=img.element_handle())
            assert img.evaluate("img => img.naturalWidth") == 64
    finally:
        farm.client.cancel(job["id"])


def test_a_finished_job_is_deleted_from_its_page_after_a_confirmation(farm, page):
    kept, job = (
        farm.submit(owner="ux-member", prompt=p, hardware="gpu", **TINY)
        for p in ("kept", "to be deleted")
    )
    for made in (kept, job):
        farm.client.cancel(made["id"])
    page.goto(farm.url + f"/jobs/{job['id']}")
    delete = page.locator("#job-actions button.delete")
    page.once("dialog", lambda dialog: dialog.dismiss())
    delete.click()
    time.sleep(0.5)
    assert farm.job(job["id"])["status"] == "canceled", "dismissed: nothing deleted"
    page.once("dialog", lambda dialog: dialog.accept())
    delete.click()
    page.wait_for_url(farm.url + "/")
    row(page, kept["id"]).wait_for()  # the queue, with the job kept and without the other
    page.locator("#flash", has_text=f"Job {job['id'][-8:]} deleted").wait_for()
    assert row(page, job["id"]).count() == 0
    assert row(page, kept["id"]).locator("button.delete").count() == 0, "only on a job's page"
    assert farm.client.request("GET", f"/api/v1/jobs/{job['id']}").status_code == 404
    # Deleted elsewhere while its page is open: the page says so, and offers nothing.
    page.goto(farm.url + f"/jobs/{kept['id']}")
    page.locator("#job-actions button.delete").wait_for()
    farm.client.delete(kept["id"])
    page.locator("#job-error", has_text="This job was deleted.").wait_for()
    assert page.locator("#job-actions button").count() == 0


def left_quarter_mask() -> str:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 16, 64))
    buf = io.BytesIO()
    mask.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


LEFT_QUARTER = left_quarter_mask()


def reused_inpainting(farm, page) -> dict:
    """A waiting inpainting job of ux-member, reused on the submit page (its images loaded)."""
    job = farm.submit(
        owner="ux-member",
        kind="img2img",
        prompt="repaint again",
        init_image=data_url((200, 80, 40)),
        mask=LEFT_QUARTER,
        hardware="gpu",
        **TINY,
    )
    page.goto(farm.url + f"/submit?from={job['id']}")
    page.locator("#reused").wait_for()
    mask = page.locator(".reused-image[data-for=mask] img")
    for preview in (page.locator("#init-preview"), mask):
        page.wait_for_function(LOADED, arg=preview.element_handle())
    return job


def test_a_mask_painted_over_a_reused_image_is_where_it_was_painted(farm, page):
    size = page.viewport_size
    page.set_viewport_size({"width": 1280, "height": 1400})  # all in view, not scrolled
    job = reused_inpainting(farm, page)
    new = None
    try:
        box = page.locator("#mask-canvas").bounding_box()
        x = box["x"] + box["width"] * 3 / 4
        page.mouse.move(x, box["y"] + 2)  # a stroke down the right quarter, top to bottom
        page.mouse.down()
        page.mouse.move(x, box["y"] + box["height"] - 2, steps=10)
        page.mouse.up()
        new = submit_form(page)
        mask = Image.open(io.BytesIO(farm.client.input(new, "mask"))).convert("L")
        assert mask.size == (64, 64)  # the init image's
        painted = [y for y in range(64) if mask.getpixel((48, y)) > 128]
        assert painted[0] <= 2 and painted[-1] >= 61, painted  # not moved by the page
        assert mask.getpixel((8, 32)) == 0  # a new mask: the old one is not kept
    finally:
        page.set_viewport_size(size)
        for made in (job["id"], new):
            if made:
                farm.client.cancel(made)


def test_clear_mask_clears_a_reused_mask(farm, page):
    job = reused_inpainting(farm, page)
    try:
        page.click("#mask-clear")
        assert page.locator(".reused-image[data-for=mask]").is_hidden()
        page.click("#job-form button[type=submit]")
        page.locator(".field-error[data-for=mask]").wait_for()  # nothing to repaint: refused
        assert page.locator("#submitted a.job-link").count() == 0
    finally:
        farm.client.cancel(job["id"])


def test_a_new_init_image_drops_a_reused_jobs_mask(farm, page):
    job = reused_inpainting(farm, page)
    try:
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (10, 200, 10)).save(buf, "PNG")
        new = {"name": "new.png", "mimeType": "image/png", "buffer": buf.getvalue()}
        page.set_input_files("input[name=init_image]", files=[new])
        page.locator(".reused-image[data-for=init_image]").wait_for(state="hidden")
        assert page.locator(".reused-image[data-for=mask]").is_hidden()
        page.click("#job-form button[type=submit]")
        page.locator(".field-error[data-for=mask]").wait_for()  # its mask went: paint one
    finally:
        farm.client.cancel(job["id"])


def test_the_submit_page_fits_a_phone_with_reused_keys_and_a_wide_init_image(farm, page):
    size = page.viewport_size
    page.set_viewport_size({"width": 390, "height": 844})
    job = reused_inpainting(farm, page)  # notes naming inputs/<64 hex digits>.png
    try:
        fits = "() => document.documentElement.scrollWidth <= window.innerWidth"
        assert page.evaluate(fits), page.evaluate("document.documentElement.scrollWidth")
        buf = io.BytesIO()
        Image.new("RGB", (512, 384), (90, 90, 200)).save(buf, "PNG")
        wide = {"name": "wide.png", "mimeType": "image/png", "buffer": buf.getvalue()}
        page.set_input_files("input[name=init_image]", files=[wide])
        page.wait_for_function("() => document.getElementById('init-preview').naturalWidth === 512")
        page.wait_for_function(fits)  # the brush and its image narrowed to the card
        canvas = page.locator("#mask-canvas").bounding_box()
        assert canvas["x"] + canvas["width"] <= 390
    finally:
        page.set_viewport_size(size)
        farm.client.cancel(job["id"])


def test_a_job_page_left_open_on_a_deleted_job_offers_none_of_its_images(farm, page):
    job = farm.submit(owner="ux-member", prompt="deleted while watched", **TINY)
    farm.wait(job["id"])
    page.goto(farm.url + f"/jobs/{job['id']}")
    page.locator("#images a.download").wait_for()
    page.locator("#inputs-box").wait_for(state="attached")
    farm.client.delete(job["id"])
    page.locator("#job-error", has_text="This job was deleted.").wait_for()
    assert page.inner_text("#job-status") == "deleted"  # not "succeeded" beside it
    assert page.locator("#images a").count() == 0  # its downloads would be 404s now
    assert page.locator("#images", has_text="deleted with it").is_visible()


def test_a_job_deleted_between_its_page_and_the_pages_first_read_says_so(farm, page):
    job = farm.submit(owner="ux-member", prompt="deleted before it was read", **TINY)
    farm.wait(job["id"])
    held = []  # the page's first read of the job, held until the job is deleted
    page.route(f"**/api/v1/jobs/{job['id']}", lambda route: held.append(route))
    try:
        page.goto(farm.url + f"/jobs/{job['id']}")  # the page itself: the job is there
        while not held:
            page.wait_for_timeout(50)
        farm.client.delete(job["id"])
        held[0].continue_()  # to the farm, which answers 404 now
    finally:
        page.unroute(f"**/api/v1/jobs/{job['id']}")
    page.locator("#job-error", has_text="This job was deleted.").wait_for()
    assert page.inner_text("#job-status") == "deleted"
    assert page.locator("#job-actions button").count() == 0


def test_deleting_a_job_goes_back_to_the_queue_it_was_opened_from(farm, page):
    jobs = [
        farm.submit(owner="ux-member", prompt=f"to clear {i}", hardware="gpu", **TINY)
        for i in range(2)
    ]
    for job in jobs:
        farm.client.cancel(job["id"])
    queue = farm.url + "/?scope=me&status=canceled&q=to+clear"
    page.goto(queue)
    row(page, jobs[0]["id"]).locator("a.job-link").click()  # clearing them out, one by one
    page.wait_for_url(farm.url + f"/jobs/{jobs[0]['id']}")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#job-actions button.delete").click()
    page.wait_for_url(queue)  # its filters kept, not the whole queue
    row(page, jobs[1]["id"]).wait_for()
    assert row(page, jobs[0]["id"]).count() == 0


def test_an_operator_is_told_whose_job_it_deletes(farm, browser):  # noqa: F811
    image = data_url((30, 60, 90))
    job = farm.submit(
        owner="ux-member", kind="upscale", image=image, upscaler="demo-esrgan-x4", scale=2,
        hardware="gpu",
    )  # fmt: skip
    farm.client.cancel(job["id"])
    page = sign_in(farm, browser, "ux-operator", "operator")
    page.goto(farm.url + f"/jobs/{job['id']}")
    page.locator("#inputs figcaption", has_text="image to upscale").wait_for()
    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    page.click("#job-actions button.delete")
    assert asked and f"Delete job {job['id'][-8:]} (ux-member's) and its images?" in asked[0]
    assert farm.job(job["id"])["status"] == "canceled"


def test_deleting_the_last_job_of_the_last_page_goes_back_to_the_page_before(farm, page):
    """Clearing a filtered queue out from its end: the page it goes back to is past the end
    once its one job is gone; it shows the last page, not 'No jobs match' without a pager."""
    batch = farm.client.submit_batch(
        spec={**TINY, "prompt": "cleared from the end", "hardware": "gpu", "batch_count": 26},
        owner="ux-member",
    )
    farm.client.cancel_batch(batch["id"])
    oldest = batch["jobs"][0]["id"]
    queue = farm.url + "/?scope=me&status=canceled&q=cleared+from+the+end&page=2"
    page.goto(queue)
    row(page, oldest).locator("a.job-link").click()
    page.wait_for_url(farm.url + f"/jobs/{oldest}")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#job-actions button.delete").click()
    page.locator("#flash", has_text=f"Job {oldest[-8:]} deleted").wait_for()
    row(page, batch["jobs"][1]["id"]).wait_for()  # the last page there is now: page 1
    assert page.locator("#empty").is_hidden()
    assert page.locator("#page-info").inner_text() == "page 1 of 1"
    assert "page=2" not in page.url
    # The gallery the same: a page past its end goes back to its last one.
    farm.wait(farm.submit(owner="ux-member", prompt="in the gallery", **TINY)["id"])
    page.goto(farm.url + "/gallery?page=9")
    page.locator("#page-info", has_text=re.compile(r"^page (\d+) of \1$")).wait_for(
        state="attached"
    )
    assert "page=9" not in page.url and page.locator("#gallery-empty").is_hidden()


def test_reusing_a_job_whose_model_left_the_store_does_not_render_with_another(
    farm, page, models_dir
):
    retired = models_dir / "checkpoints" / "ux-retired-sd15"
    shutil.copytree(models_dir / "checkpoints" / "demo-sd15", retired)
    try:
        job = farm.submit(owner="ux-member", prompt="on a retired model", hardware="gpu",
                          **{**TINY, "model": "ux-retired-sd15"})  # fmt: skip
        farm.client.cancel(job["id"])
    finally:
        shutil.rmtree(retired)
    # The page reads the models again after filling the form; held here, so what it shows
    # comes from the reuse itself (it once showed the model only after that second read).
    reads, held = [], []
    page.route("**/api/v1/models", lambda route: (held if reads else reads).append(route))
    try:
        page.goto(farm.url + f"/submit?from={job['id']}")
        while not reads:
            page.wait_for_timeout(50)
        reads[0].continue_()
        page.locator("#reused", has_text="Settings of job").wait_for()
        model = page.locator("select[name=model]")
        assert model.input_value() == "ux-retired-sd15"  # not demo-sd15, the first one listed
        assert model.locator("option:checked").inner_text() == "ux-retired-sd15 (not in the store)"
        for route in held:
            route.continue_()
    finally:
        page.unroute("**/api/v1/models")
    assert model.locator("option:checked").inner_text() == "ux-retired-sd15 (not in the store)"
    time.sleep(LocalModelStore.FOUND_TTL_S)  # the dashboard's memory of the model found
    page.click("#render")
    error = page.locator(".field-error[data-for='model']")
    error.wait_for()
    assert "ux-retired-sd15" in error.inner_text()
    assert page.locator("#submitted a.job-link").count() == 0


def control_of(farm):
    """The farm's job control in this process, on its Redis and model store."""
    from scheduler.control import JobControl
    from shared.config import Settings

    env = farm.env
    return JobControl(
        Settings(redis_url=env["RENDERFARM_REDIS_URL"], models_dir=env["RENDERFARM_MODELS_DIR"])
    )


def recorded_at_once(control, owner: str, prompts: list[str]) -> list[str]:
    """Jobs of `owner` recorded in batches, oldest first (they wait for a GPU the farm
    lacks): thousands in seconds, where POSTing them would take minutes."""
    from shared.jobspec import parse_spec
    from shared.vocabulary import Priority

    ids = []
    for at in range(0, len(prompts), 500):
        specs = [
            parse_spec({**TINY, "prompt": p, "hardware": "gpu"}, control.settings).with_seed()
            for p in prompts[at : at + 500]
        ]
        ids += [r["id"] for r in control.enqueue(specs, owner, Priority.NORMAL)]
        time.sleep(0.01)  # each batch newer than the one before
    return ids


def test_a_prompt_search_that_left_older_jobs_unread_says_so(farm, page, tmp_path):
    from tests.test_cli_jobs import cli

    owner, control = "ux-searcher", control_of(farm)
    ensure_account(farm.redis, owner)
    # The oldest needle lies beyond the newest 5,000 jobs the search reads; two are within.
    ids = recorded_at_once(control, owner, ["a needle, the oldest"])
    ids += recorded_at_once(control, owner, ["hay"] * 4998 + ["a needle"] * 2)
    try:
        found = farm.client.find_jobs(owner=owner, q="needle")
        assert (found["total"], found["truncated"], found["searched"]) == (2, True, 5000)
        assert farm.client.find_jobs(owner=owner, q="oldest")["total"] == 0  # never read
        assert farm.client.find_jobs(owner=owner)["searched"] is None  # no search, no note

        listed = cli(farm, "jobs", "--owner", owner, "--q", "needle", cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.splitlines()[-2:] == [
            "(2 jobs)",
            "(the search read only the newest 5000 jobs of the other filters: narrow them, "
            "with --owner, --status or --model, to search older ones)",
        ]
        plain = cli(farm, "jobs", "--owner", owner, "--limit", "3", cwd=tmp_path)
        assert plain.stdout.splitlines()[-1] == "(3 of 5001 jobs)"

        page.goto(farm.url + f"/?owner={owner}&q=needle")
        counts = page.locator("#counts")
        counts.filter(has_text="2 jobs in the newest 5000 searched").wait_for()
        assert "narrow the other filters to search older ones" in counts.inner_text()
        page.goto(farm.url + f"/?owner={owner}")
        page.locator("#counts", has_text=re.compile(r"^5001 jobs$")).wait_for()
    finally:
        control.cancel_all(owner)
        for job_id in ids:
            control.delete(job_id)
