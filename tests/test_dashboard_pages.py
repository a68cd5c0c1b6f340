"""The dashboard's pages in a real headless Chromium against a real farm: every job kind
through the submit form (an upload, a painted mask), a live progress bar, cancel, retry,
reuse settings, filters, the gallery, draining a worker, the admin page."""

import io
from contextlib import suppress

import pytest
from PIL import Image

from shared.client import ApiError
from tests.test_dashboard_browser import browser, open_submit, sign_in, submit_form  # noqa: F401

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def page(farm, browser):  # noqa: F811
    return sign_in(farm, browser, "painter", "member")


def png_file(tmp_path, name: str, size=(64, 64), color=(200, 80, 40)) -> str:
    path = tmp_path / name
    img = Image.new("RGB", size, color)
    for x in range(size[0]):
        img.putpixel((x, x % size[1]), (20, 200, 90))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    path.write_bytes(buf.getvalue())
    return str(path)


def diffusion_fields(page, prompt: str, steps: int = 2) -> None:
    page.select_option("#model-select", "demo-sd15")
    page.fill("textarea[name=prompt]", prompt)
    page.fill("input[name=width]", "64")
    page.fill("input[name=height]", "64")
    page.fill("input[name=steps]", str(steps))


def test_txt2img_with_hires_fix(farm, page):
    open_submit(farm, page, "txt2img")
    diffusion_fields(page, "hires from the form")
    page.check("#hires-enable")
    page.fill("input[name=hires_scale]", "2")
    page.select_option("select[name=hires_upscaler]", "latent")
    page.fill("input[name=hires_steps]", "2")
    page.fill("input[name=hires_denoising]", "0.5")
    job = farm.wait(submit_form(page))
    assert job["status"] == "succeeded", job["error"]
    assert job["spec"]["hires"]["scale"] == 2 and job["spec"]["hires"]["upscaler"] == "latent"
    assert job["spec"]["hires"]["steps"] == 2
    png = farm.client.output(job["id"], 0)
    assert Image.open(io.BytesIO(png)).size == (128, 128)


def test_img2img_with_an_uploaded_image(farm, page, tmp_path):
    open_submit(farm, page, "img2img")
    assert page.locator("#hires").is_hidden()  # only for txt2img
    diffusion_fields(page, "img2img from an upload")
    page.set_input_files("input[name=init_image]", png_file(tmp_path, "init.png"))
    page.locator("#init-preview").wait_for()  # read into the page
    page.fill("input[name=denoising_strength]", "0.6")
    job = farm.wait(submit_form(page))
    assert job["status"] == "succeeded", job["error"]
    assert job["spec"]["kind"] == "img2img" and job["spec"]["init_image"].startswith("inputs/")
    assert job["spec"]["mask"] is None and job["spec"]["denoising_strength"] == 0.6


def test_inpainting_with_a_mask_painted_with_the_brush(farm, page, tmp_path):
    open_submit(farm, page, "inpaint")
    diffusion_fields(page, "inpainting with a painted mask")
    page.set_input_files("input[name=init_image]", png_file(tmp_path, "init.png", (128, 128)))
    canvas = page.locator("#mask-canvas")
    canvas.wait_for()
    page.wait_for_function("c => c.width > 0 && c.height > 0", arg=canvas.element_handle())
    canvas.scroll_into_view_if_needed()  # the mouse does not scroll
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.6, steps=8)
    page.mouse.up()
    job_id = submit_form(page)
    job = farm.wait(job_id)
    assert job["status"] == "succeeded", job["error"]
    assert job["spec"]["mask"].startswith("inputs/") and job["spec"]["init_image"].startswith(
        "inputs/"
    )
    # The mask as sent: the init image's size, white where painted, black elsewhere.
    sent = page.evaluate(
        "() => { const c = document.getElementById('mask-canvas');"
        " return [c.getContext('2d').getImageData(c.width/2, c.height*0.45, 1, 1).data[3],"
        " c.getContext('2d').getImageData(2, c.height - 3, 1, 1).data[3]]; }"
    )
    assert sent[0] > 0 and sent[1] == 0
    page.goto(farm.url + f"/jobs/{job_id}")
    page.locator("#job-kind", has_text="inpaint").wait_for()


def test_an_inpainting_job_without_a_mask_is_refused_beside_the_mask(farm, page, tmp_path):
    open_submit(farm, page, "inpaint")
    diffusion_fields(page, "inpainting without a mask")
    page.set_input_files("input[name=init_image]", png_file(tmp_path, "init.png"))
    page.click("#job-form button[type=submit]")
    page.locator(".field-error[data-for=mask]").wait_for()
    assert page.input_value("textarea[name=prompt]") == "inpainting without a mask"


def test_upscale_with_an_uploaded_image(farm, page, tmp_path):
    open_submit(farm, page, "upscale")
    assert page.locator("textarea[name=prompt]").is_hidden()
    page.set_input_files("input[name=image]", png_file(tmp_path, "small.png", (32, 32)))
    page.select_option("select[name=upscaler]", "demo-esrgan-x4")
    page.fill("input[name=scale]", "2")
    job = farm.wait(submit_form(page))
    assert job["status"] == "succeeded", job["error"]
    assert job["spec"]["kind"] == "upscale" and job["spec"]["scale"] == 2
    png = farm.client.output(job["id"], 0)
    assert Image.open(io.BytesIO(png)).size == (64, 64)


def test_the_progress_bar_advances_with_no_reload(farm, page):
    page.goto(farm.url + "/")
    page.wait_for_selector("#counts:not(:empty)")  # the first answer is in
    page.evaluate("window.__stayed = true")
    url = page.url
    job = farm.submit(
        owner="painter", model="demo-sd15", prompt="a slow one", width=256, height=256, steps=150
    )
    bar = page.locator(f"#job-rows tr[data-job-id='{job['id']}'] td.status progress")
    try:
        bar.wait_for(timeout=60_000)  # a new row, running
    except Exception:
        row = page.locator(f"#job-rows tr[data-job-id='{job['id']}']")
        raise AssertionError((farm.job(job["id"]), row.inner_text())) from None
    handle = bar.element_handle()
    page.wait_for_function("b => b.value > 0", arg=handle, timeout=60_000)
    first = handle.evaluate("b => b.value")
    page.wait_for_function("([b, v]) => b.value > v", arg=[handle, first], timeout=60_000)
    assert handle.evaluate("b => b.isConnected")  # the same element, updated in place
    assert page.evaluate("window.__stayed") is True and page.url == url
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    row = page.locator(f"#job-rows tr[data-job-id='{job['id']}']")
    row.locator("td.status", has_text="succeeded").wait_for(timeout=60_000)
    assert page.evaluate("window.__stayed") is True


def test_a_running_jobs_note_shows_under_its_status_as_it_changes(farm, page):
    """What a worker notes on a running job (a model it fetches, outputs waiting for storage
    to come back) is shown on the job's page and its queue row, live, and goes when cleared."""
    from scheduler.records import JobRecords
    from shared.vocabulary import JobStatus

    job = farm.submit(
        owner="painter", model="demo-sd15", prompt="a noted one", width=256, height=256, steps=150
    )
    records = JobRecords(farm.redis)
    try:
        farm.client.wait(job["id"], 60, until={"running"})
        page.goto(f"{farm.url}/jobs/{job['id']}")
        line = page.locator("#job-waiting")
        page.wait_for_function("() => document.querySelector('#job-progress').value > 0")
        assert line.is_hidden()  # a running job with nothing to say: no line
        noted = "storing outputs: storage unreachable, retrying (at most 600s): timed out"
        # As the worker writes it (worker/runner.py; the worker also gives its attempt).
        assert records.update(job["id"], JobStatus.RUNNING, note=noted)
        line.filter(has_text=noted).wait_for(timeout=10_000)
        queue = page.context.new_page()
        queue.goto(farm.url + "/")
        cell = queue.locator(f"#job-rows tr[data-job-id='{job['id']}'] td.status small.waiting")
        cell.filter(has_text=noted).wait_for(timeout=10_000)
        assert records.update(job["id"], JobStatus.RUNNING, note="")
        line.wait_for(state="hidden", timeout=10_000)
        cell.wait_for(state="hidden", timeout=10_000)
        queue.close()
    finally:
        with suppress(ApiError):  # 409 if it finished already
            farm.client.cancel(job["id"])
        farm.wait(job["id"])


def test_cancel_then_retry_from_the_queue(farm, page):
    job = farm.submit(
        owner="painter", model="demo-sd15", prompt="cancel me then retry me", hardware="gpu"
    )
    try:
        page.goto(farm.url + "/")
        row = page.locator(f"#job-rows tr[data-job-id='{job['id']}']")
        row.locator("button.cancel").click()
        row.locator("td.status", has_text="canceled").wait_for()
        row.locator("button.retry").click()
        row.locator("td.status", has_text="queued").wait_for()
        assert farm.job(job["id"])["status"] == "queued"
        row.locator("select.priority").select_option("high")
        for _ in range(50):  # the select posts; the server answers
            if farm.job(job["id"])["priority"] == "high":
                break
            page.wait_for_timeout(100)
        assert farm.job(job["id"])["priority"] == "high"
    finally:
        farm.client.cancel(job["id"])


def test_another_members_job_has_no_buttons(farm, page):
    job = farm.submit(owner="someone-else", model="demo-sd15", prompt="not yours", hardware="gpu")
    try:
        page.goto(farm.url + "/")
        row = page.locator(f"#job-rows tr[data-job-id='{job['id']}']")
        row.locator("td.status", has_text="queued").wait_for()
        assert row.locator("button").count() == 0
    finally:
        farm.client.cancel(job["id"])


def test_reuse_settings_fills_the_form(farm, page):
    job = farm.submit(
        owner="painter",
        model="demo-sd15",
        prompt="reuse these settings",
        negative_prompt="blurry",
        width=64,
        height=72,
        steps=3,
        seed=4242,
        sampler="DDIM",
    )
    farm.wait(job["id"])
    page.goto(farm.url + f"/jobs/{job['id']}")
    page.locator("#job-status", has_text="succeeded").wait_for()
    page.click("#reuse")
    page.wait_for_url(f"**/submit?from={job['id']}")
    page.locator("#reused", has_text=job["id"][-8:]).wait_for()  # the short form
    assert page.input_value("textarea[name=prompt]") == "reuse these settings"
    assert page.input_value("textarea[name=negative_prompt]") == "blurry"
    assert page.input_value("input[name=height]") == "72"
    assert page.input_value("input[name=steps]") == "3"
    assert page.input_value("input[name=seed]") == "4242"
    assert page.input_value("select[name=sampler]") == "DDIM"
    again = farm.wait(submit_form(page))
    assert again["spec"]["seed"] == 4242 and again["spec"]["height"] == 72


def test_filters_narrow_the_queue(farm, page):
    mine = farm.submit(owner="painter", model="demo-sd15", prompt="okapi crossing", steps=1)
    theirs = farm.submit(owner="filter-other", model="demo-sd15", prompt="okapi herd", steps=1)
    farm.wait(mine["id"]), farm.wait(theirs["id"])
    page.goto(farm.url + "/")
    page.fill("#filters input[name=q]", "okapi")
    rows = page.locator("#job-rows tr.job")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#job-rows tr.job')].length === 2"
        " && [...document.querySelectorAll('#job-rows tr.job')]"
        ".every(r => r.textContent.includes('okapi'))"
    )
    page.select_option("#filters select[name=scope]", "me")
    page.wait_for_function("() => document.querySelectorAll('#job-rows tr.job').length === 1")
    assert rows.first.get_attribute("data-job-id") == mine["id"]
    assert "scope=me" in page.url and "q=okapi" in page.url  # bookmarkable
    page.select_option("#filters select[name=scope]", "")
    page.fill("#filters input[name=owner]", "filter-other")
    page.wait_for_function(
        "id => document.querySelectorAll('#job-rows tr.job').length === 1"
        " && document.querySelector('#job-rows tr.job').dataset.jobId === id",
        arg=theirs["id"],
    )
    page.select_option("#filters select[name=status]", "failed")
    page.locator("#empty").wait_for()
    page.reload()  # the filters come back from the address
    assert page.input_value("#filters input[name=owner]") == "filter-other"
    page.locator("#empty").wait_for()


def test_the_gallery_shows_the_new_image_as_a_thumbnail(farm, page):
    job = farm.submit(owner="painter", model="demo-sd15", prompt="for the gallery", steps=2)
    farm.wait(job["id"])
    page.goto(farm.url + "/gallery")
    tile = page.locator(f"#grid .tile[data-job='{job['id']}']")
    tile.wait_for()
    img = tile.locator("img")
    src = img.get_attribute("src")
    assert "thumbnail" in src and not src.endswith("/outputs/0")
    assert "for the gallery" in tile.get_attribute("title")
    page.select_option("#gallery-filters select[name=scope]", "me")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#grid .tile')].every("
        "t => t.title.startsWith('painter'))"
    )
    tile.wait_for()


def test_an_operator_drains_and_undrains_a_worker(farm, browser):  # noqa: F811
    ops = sign_in(farm, browser, "ops-lead", "operator")
    ops.goto(farm.url + "/workers")
    row = ops.locator("#worker-rows tr", has_text="cpu").first
    row.wait_for()
    name = row.get_attribute("data-worker")
    try:
        row.locator("button.drain").click()
        row.locator("td.state", has_text="draining").wait_for(timeout=15_000)
        assert any(w["draining"] for w in farm.client.workers() if w["name"] == name)
        row.locator("button.undrain").click()
        row.locator("button.drain").wait_for(timeout=15_000)
    finally:
        farm.client.drain(name, False)
    ops.context.close()


def test_the_admin_page_makes_an_account_and_shows_a_token_once(farm, browser):  # noqa: F811
    admin = sign_in(farm, browser, "page-admin", "admin")
    admin.goto(farm.url + "/admin")
    admin.locator("#account-rows tr[data-account='page-admin']").wait_for()
    admin.fill("#new-account input[name=name]", "new-hire")
    admin.select_option("#new-account select[name=role]", "viewer")
    admin.click("#new-account button[type=submit]")
    admin.locator("#account-rows tr[data-account='new-hire']").wait_for()
    admin.select_option("#token-account", "new-hire")
    admin.fill("#new-token input[name=label]", "from the page")
    admin.click("#new-token button[type=submit]")
    secret = admin.locator("#token-secret")
    secret.wait_for()
    assert secret.inner_text().startswith("rf_")
    admin.locator("#token-rows tr", has_text="from the page").wait_for()
    admin.locator("#audit-rows tr", has_text="token.create").first.wait_for()
    admin.reload()
    assert admin.locator("#new-token-secret").is_hidden()  # shown once
    admin.context.close()
