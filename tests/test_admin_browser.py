"""The operator's cockpit in a real browser (headless Chromium) against a live server.

Real requests go through the engine and the fake OpenAI; the operator logs in, reads the
dashboard, flushes a queue, cancels a running batch, and requeues a failed request. A screenshot
of the dashboard is kept in tests/artifacts/.
"""

import shutil
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from batches_app.models import Batch
from requests_app.models import BatchRequest

from .cockpit import chat, send
from .conftest import make_key
from .engine import cycle

Status = BatchRequest.Status
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

# Each part missing is its own reason: Selenium would otherwise try to download a driver.
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not CHROMIUM, reason="needs Chromium (Debian: apt-get install chromium chromium-driver)"
    ),
    pytest.mark.skipif(
        not CHROMEDRIVER,
        reason="needs ChromeDriver beside Chromium (Debian: apt-get install chromium-driver)",
    ),
]


def start_browser(width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(10)
    return driver


@pytest.fixture
def browser():
    driver = start_browser(1400, 1900)
    yield driver
    driver.quit()


@pytest.fixture
def cockpit(live_server, fake_openai, settings, client):
    """Answered, failed and queued requests, made through the engine; and an operator."""
    settings.MAX_ATTEMPTS = 1
    get_user_model().objects.create_superuser("operator", "op@example.com", "op-password")
    _, secret = make_key("data team")
    send(client, secret, chat("a" * 4000))
    send(client, secret, chat("b" * 4000))
    failed = send(client, secret, chat("boom [[error:server_error]]"))
    send(client, secret, {"model": "text-embedding-3-small", "input": "c" * 400}, "embeddings")
    cycle()
    # From here on batches take a minute per step upstream: flushed ones stay running.
    fake_openai.configure(step_seconds=60)
    queued = [send(client, secret, chat(text, model="gpt-4.1-mini")) for text in ("x", "y")]
    return {"failed": failed, "queued": queued, "url": live_server.url}


def run_action(browser, action: str, pk) -> str:
    """Tick one row of a changelist, run an action on it, and return the message shown."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.find_element(By.CSS_SELECTOR, f'input[name="_selected_action"][value="{pk}"]').click()
    Select(browser.find_element(By.NAME, "action")).select_by_value(action)
    browser.find_element(By.NAME, "index").click()
    return browser.find_element(By.CSS_SELECTOR, "ul.messagelist li").text


def test_operator_reads_dashboard_flushes_cancels_and_requeues(browser, cockpit):
    from selenium.webdriver.common.by import By

    url = cockpit["url"]
    sign_in(browser, url)

    # The index links to the dashboard, which shows the figures of the requests above.
    browser.find_element(By.LINK_TEXT, "▸ Dashboard").click()
    assert browser.find_element(By.ID, "bp-completed-day").text == "3"
    assert browser.find_element(By.ID, "bp-failed-day").text == "1"
    assert browser.find_element(By.ID, "bp-waiting").text == "2"
    by_model = browser.find_element(By.ID, "bp-by-model").text
    assert "gpt-4o-mini 2 2000 2004" in by_model  # 2 x 1000 in; 2 x 1002 out
    assert "text-embedding-3-small 1 100 0" in by_model
    assert "data team" in browser.find_element(By.ID, "bp-by-key").text
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))

    # Flush now: the waiting group becomes a batch, running upstream.
    browser.find_element(By.CSS_SELECTOR, "input.bp-flush-group").click()
    message = browser.find_element(By.CSS_SELECTOR, "ul.messagelist li").text
    assert message.startswith(
        "Flushed /v1/chat/completions gpt-4.1-mini: 1 batches with 2 requests"
    )
    assert browser.find_element(By.ID, "bp-waiting").text == "2"  # now in a batch
    assert "Nothing is waiting" not in browser.find_element(By.ID, "bp-queue").text
    running = Batch.objects.get(model="gpt-4.1-mini")
    assert running.state == Batch.State.RUNNING

    # Cancel it, requeueing its requests; a poll sees the upstream cancel through.
    browser.get(f"{url}/admin/batches_app/batch/?state__exact=running")
    assert run_action(browser, "cancel_requeue", running.pk).startswith(
        "1 batches cancelled upstream"
    )
    browser.get(f"{url}/admin/batches_app/batch/?upstream_status__exact=cancelling")
    run_action(browser, "poll_now", running.pk)
    browser.get(f"{url}/admin/requests_app/batchrequest/?status__exact=queued")
    listed = browser.find_element(By.ID, "result_list").text
    assert all(request_id[:8] in listed for request_id in cockpit["queued"])

    # Requeue the failed request.
    browser.get(f"{url}/admin/requests_app/batchrequest/?status__exact=failed")
    assert run_action(browser, "requeue", cockpit["failed"]) == (
        "1 requests requeued; 0 were not failed or cancelled."
    )
    assert BatchRequest.objects.get(pk=cockpit["failed"]).status == Status.QUEUED


def sign_in(browser, url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{url}/admin/login/")
    browser.find_element(By.NAME, "username").send_keys("operator")
    browser.find_element(By.NAME, "password").send_keys("op-password")
    browser.find_element(By.CSS_SELECTOR, 'input[type="submit"]').click()
    # Signed in once the admin answers the form: navigating on before that would cancel the
    # sign-in and leave every later page on the login form (seen on a busy machine).
    WebDriverWait(browser, 20).until(lambda b: b.find_elements(By.ID, "user-tools"))


# Elements (selector) sticking out of their box: right edge past it, or scrolled inside it.
SPILLS = """
const [inner, outer] = arguments;
return [...document.querySelectorAll(inner)].filter(el => {
  const box = el.closest(outer);
  return el.getBoundingClientRect().right > box.getBoundingClientRect().right + 1
    || box.scrollWidth > box.clientWidth + 1;
}).map(el => el.closest(outer).id || el.closest(outer).className);
"""
PAGE_SCROLLS = "return document.documentElement.scrollWidth > window.innerWidth + 1;"


@pytest.mark.parametrize("width", [1366, 1920])
def test_admin_fits_common_screens_and_shows_no_save_where_nothing_is_editable(
    cockpit, settings, client, width
):
    """At 1366 and 1920 px: no dashboard table spills out of its card, the request list shows
    its key columns without scrolling, and requests, batches and files have no Save button."""
    from selenium.webdriver.common.by import By

    url = cockpit["url"]
    browser = start_browser(width, 900)
    try:
        sign_in(browser, url)
        browser.get(f"{url}/admin/dashboard/")
        assert browser.find_elements(By.CSS_SELECTOR, ".bp-card table"), "not on the dashboard"
        ARTIFACTS.mkdir(exist_ok=True)
        browser.set_window_size(width, 2600)  # the whole page in the screenshot
        browser.save_screenshot(str(ARTIFACTS / f"dashboard-{width}.png"))
        browser.set_window_size(width, 900)
        spilled = browser.execute_script(SPILLS, ".bp-card table, .bp-card .bp-stats", ".bp-card")
        assert spilled == []
        assert not browser.execute_script(PAGE_SCROLLS)

        browser.get(f"{url}/admin/requests_app/batchrequest/")
        browser.save_screenshot(str(ARTIFACTS / f"requests-{width}.png"))
        assert not browser.execute_script(PAGE_SCROLLS)
        # Seen: inside the list's own scrolling box as it opens, and inside the window.
        box = browser.find_element(By.CSS_SELECTOR, "#changelist .results").rect
        edge = min(width, box["x"] + box["width"])
        headers = browser.find_elements(By.CSS_SELECTOR, "#result_list thead th")
        # A pixel of slack: the last column ends on the box's edge, give or take a fraction.
        shown = {
            h.text.strip().lower() for h in headers if h.rect["x"] + h.rect["width"] <= edge + 1
        }
        key_columns = {"id", "status", "model", "api key", "age", "error code", "batch"}
        assert key_columns <= shown, shown

        batch = Batch.objects.exclude(upstream_id="").first()
        for page in (
            f"requests_app/batchrequest/{cockpit['failed']}/change/",
            f"batches_app/batch/{batch.pk}/change/",
            f"batches_app/upstreamfile/{batch.files.first().pk}/change/",
        ):
            browser.get(f"{url}/admin/{page}")
            assert browser.find_elements(By.CSS_SELECTOR, "#content-main form, #content-main")
            assert not browser.find_elements(By.CSS_SELECTOR, 'input[type="submit"][name^="_"]')
            assert not browser.execute_script(PAGE_SCROLLS), page
    finally:
        browser.quit()


def admin_pages(cockpit) -> dict[str, str]:
    """Every page an operator opens, by a name for its screenshot."""
    from requests_app.models import ApiKey

    failed_batch = BatchRequest.objects.get(pk=cockpit["failed"]).batch
    done = BatchRequest.objects.filter(status=Status.COMPLETED).first()
    pages = {
        "index": "",
        "dashboard": "dashboard/",
        "batches": "batches_app/batch/",
        "batch-failed": f"batches_app/batch/{failed_batch.pk}/change/",
        "batch-done": f"batches_app/batch/{done.batch_id}/change/",
        "requests": "requests_app/batchrequest/",
        "request-failed": f"requests_app/batchrequest/{cockpit['failed']}/change/",
        "request-done": f"requests_app/batchrequest/{done.pk}/change/",
        "files": "batches_app/upstreamfile/",
        "keys": "requests_app/apikey/",
        "key": f"requests_app/apikey/{ApiKey.objects.first().pk}/change/",
        "prices": "batches_app/modelprice/",
        "queue-limits": "batches_app/queuelimit/",
        "webhooks": "requests_app/webhookendpoint/",
        "openai-webhooks": "batches_app/openaiwebhook/",
    }
    return pages


@pytest.mark.parametrize("width", [1366, 1920])
def test_every_admin_page_fits_and_is_kept_as_a_screenshot(cockpit, width):
    """Each page at 1366 and 1920 px: no sideways scroll, no table row taller than one line in
    a list; a screenshot of each in tests/artifacts/ to be looked at."""
    url = cockpit["url"]
    browser = start_browser(width, 900)
    ARTIFACTS.mkdir(exist_ok=True)
    faults = []
    try:
        sign_in(browser, url)
        for name, page in admin_pages(cockpit).items():
            browser.get(f"{url}/admin/{page}")
            height = browser.execute_script("return document.documentElement.scrollHeight;")
            browser.set_window_size(width, max(min(height, 4000), 600))
            browser.save_screenshot(str(ARTIFACTS / f"page-{name}-{width}.png"))
            browser.set_window_size(width, 900)
            if browser.execute_script(PAGE_SCROLLS):
                faults.append((name, "the page scrolls sideways"))
            if browser.execute_script(LIST_SCROLLS):
                faults.append((name, "the list scrolls sideways"))
            if tall := browser.execute_script(TALL_ROWS):
                faults.append((name, "rows taller than a line", tall))
    finally:
        browser.quit()
    assert faults == []


LIST_SCROLLS = """
const box = document.querySelector('#changelist .results');
return !!box && box.scrollWidth > box.clientWidth + 1;
"""
# Rows of a changelist taller than its shortest: a wrapped model name, a cut body.
TALL_ROWS = """
const rows = [...document.querySelectorAll('#result_list tbody tr')];
const least = Math.min(...rows.map(tr => tr.getBoundingClientRect().height));
return rows.filter(tr => tr.getBoundingClientRect().height > least * 1.4)
  .map(tr => tr.innerText.slice(0, 60));
"""
