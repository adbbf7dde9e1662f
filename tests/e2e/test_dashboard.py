"""The web dashboard at /ui in a real headless Chromium (Debian's, driven by Playwright from PyPI; no browser is
downloaded), against a real `jetsonmind serve` that requires API keys: sign in with a key, see this machine's memory
as /proc/meminfo has it, watch a chart take points, chat with the real model and see the answer arrive in pieces,
read a picture, change a setting (a bad value is shown next to its field), create and revoke a key; requests without
a session or with a forged CSRF token are refused, and a narrow key sees and may do only what it allows.
Screenshots of each page go to tests/e2e/artifacts (JETSONMIND_ARTIFACTS moves them)."""

import os
import re
import shutil
import urllib.request
from pathlib import Path

import pytest

from conftest import DEFAULT_MODEL, MODELS, NO_CACHE, ROOT, create_key, import_model, make_data_dir, start_serve, stop_serve

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("JETSONMIND_ARTIFACTS", ROOT / "tests" / "e2e" / "artifacts"))
PICTURES = ROOT / "tests" / "e2e" / "assets"


@pytest.fixture(scope="module")
def dashboard(binary, tmp_path_factory):
    """A serve that requires keys, taking a chart point every 300 ms: (base URL, keys, data dir)."""
    data_dir = make_data_dir(binary, tmp_path_factory.mktemp("ui-data"))
    import_model(binary, data_dir, MODELS / "efficientnet-lite0", "--link")
    keys = {
        "admin": create_key(binary, data_dir, "ops", "admin"),
        "viewer": create_key(binary, data_dir, "viewer", "metrics", "resources:jetson://system/metrics"),
    }
    env = {**NO_CACHE, "JETSONMIND_AUTH__REQUIRED": "true", "JETSONMIND_GATEWAY__UI__SAMPLE_MS": "300"}
    served = start_serve(binary, data_dir, tmp_path_factory.mktemp("ui-logs") / "serve.log", env)
    yield served.url.removesuffix("/mcp"), keys, data_dir
    stop_serve(served)
    log = served.log.read_text()
    assert all(key not in log for key in keys.values()), "secrets never reach the log"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Root in a container has no user namespaces for Chromium's sandbox.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def signed_in(browser, base, key):
    """A fresh browser context, signed in with `key`: its page, on the overview. `page.problems` collects what the
    browser reports as errors (a script failing, a request refused, the content policy blocking something)."""
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.problems = []
    page.on("console", lambda message: message.type == "error" and page.problems.append(message.text))
    page.on("pageerror", lambda error: page.problems.append(str(error)))
    page.goto(f"{base}/ui")
    assert page.url.endswith("/ui/login"), "a browser without a session is sent to sign in"
    page.fill("input[name=key]", key)
    page.click("button")
    page.wait_for_url(f"{base}/ui")
    return page


def screenshot(page, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def until(page, what, check, timeout=30, reload=False):
    """Polls `check()` until it holds, loading the page again between tries with `reload`. (Playwright's
    wait_for_function would evaluate a string in the page, which the dashboard's content security policy forbids.)"""
    for _ in range(timeout * 10):
        if check():
            return
        page.wait_for_timeout(100)
        if reload:
            page.reload()
    pytest.fail(f"{what}: not within {timeout} s")


def meminfo():
    fields = dict(re.findall(r"^(\w+):\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M))
    total = int(fields["MemTotal"]) * 1024
    return total, total - int(fields["MemAvailable"]) * 1024


def test_sign_in_shows_this_machine_s_real_figures(dashboard, browser):
    base, keys, _ = dashboard
    page = browser.new_context().new_page()
    page.goto(f"{base}/ui/login")
    page.fill("input[name=key]", "jm_nosuch_" + "0" * 64)
    page.click("button")
    assert "unknown or revoked API key" in page.inner_text("main")

    page = signed_in(browser, base, keys["admin"])
    memory = page.locator("#nodes .memory").first
    used, total = int(memory.get_attribute("data-used-bytes")), int(memory.get_attribute("data-total-bytes"))
    real_total, real_used = meminfo()
    assert abs(total - real_total) <= 0.05 * real_total, (total, real_total)
    assert abs(used - real_used) <= 0.05 * real_total, (used, real_used)
    assert "compute-local" in page.inner_text("#replicas")
    assert "would go to" in page.inner_text("#routing")
    screenshot(page, "overview")
    cookie = next(c for c in page.context.cookies() if c["name"] == "jm_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"


def test_a_chart_takes_new_points_as_they_come(dashboard, browser):
    base, keys, _ = dashboard
    page = signed_in(browser, base, keys["admin"])
    page.click("nav >> text=Charts")
    points = lambda: int(page.get_attribute("#chart-status", "data-points"))  # noqa: E731
    until(page, "two points drawn", lambda: points() >= 2)
    seen = points()
    until(page, "a new point drawn", lambda: points() > seen)
    for chart in ["cpu", "memory", "rates"]:
        assert page.locator(f"#chart-{chart} canvas").count() == 1, f"the {chart} chart is drawn"
    assert not page.problems, page.problems
    screenshot(page, "charts")


def test_the_playground_streams_a_chat_and_reads_a_picture(dashboard, browser):
    base, keys, _ = dashboard
    page = signed_in(browser, base, keys["admin"])
    page.click("nav >> text=Playground")
    # Every length the answer had on the page, as the script appended the chunks.
    page.evaluate(
        """() => { window.lengths = [];
        new MutationObserver(() => { const a = document.querySelector('.turn.assistant');
          if (a) window.lengths.push(a.textContent.length); })
        .observe(document.querySelector('#chat-log'), {childList: true, subtree: true, characterData: true}); }"""
    )
    page.fill("#chat-form textarea", "Write two sentences about the sea.")
    page.fill("#chat-form input[name=max_tokens]", "48")
    page.click("#chat-form button")
    page.wait_for_selector(".turn.assistant[data-done]", timeout=120_000)
    answer = page.inner_text(".turn.assistant")
    assert answer and not answer.startswith("Error"), answer
    lengths = sorted(set(page.evaluate("window.lengths")) - {0})
    assert len(lengths) >= 3, f"the answer arrived in pieces, not whole: {lengths}"

    page.set_input_files("#image-form input[type=file]", str(PICTURES / "chelsea.png"))
    page.click("#image-form button")
    page.wait_for_selector("#image-result[data-done]", timeout=120_000)
    assert "cat" in page.inner_text("#image-result").lower()
    assert not page.problems, page.problems
    screenshot(page, "playground")

    # The chat loaded the model: the models page shows where, and unloads it.
    page.click("nav >> text=Models")
    row = page.locator("#models tr", has_text=DEFAULT_MODEL)
    # The replicas' reports reach the gateway at its next health check.
    until(page, "the model shown loaded", lambda: "compute-local" in row.inner_text(), reload=True)
    row.locator("button", has_text="Unload").click()
    until(page, "the unload done", lambda: "done" in page.inner_text("#action-status"))
    until(page, "the model shown unloaded", lambda: "compute-local" not in row.inner_text(), reload=True)
    screenshot(page, "models")


def test_a_bad_setting_is_shown_at_its_field_and_a_good_one_is_saved(dashboard, browser):
    base, keys, _ = dashboard
    page = signed_in(browser, base, keys["admin"])
    page.click("nav >> text=Settings")
    page.click('summary:text-is("cache")')
    page.fill('input[name="cache.ttl_secs"]', "soon")
    page.click("#settings-form button")
    error = page.locator('label:has(input[name="cache.ttl_secs"]) .field-error')
    assert "not a number" in error.inner_text()
    assert page.get_attribute('input[name="cache.ttl_secs"]', "aria-invalid") == "true"
    assert page.input_value('input[name="cache.ttl_secs"]') == "soon", "what was typed is kept"

    page.click('summary:text-is("compute")')
    page.fill('input[name="compute.parallel"]', "65")
    page.fill('input[name="cache.ttl_secs"]', "600")
    page.click("#settings-form button")
    refused = page.locator('label:has(input[name="compute.parallel"]) .field-error')
    assert refused.count() == 1, "the server's refusal is shown next to the field it names"

    page.goto(f"{base}/ui/settings")
    page.click('summary:text-is("cache")')
    page.fill('input[name="cache.ttl_secs"]', "123")
    page.click("#settings-form button")
    assert "cache.ttl_secs" in page.inner_text("#settings-saved")
    assert page.input_value('input[name="cache.ttl_secs"]') == "123"
    screenshot(page, "settings")


def test_a_key_is_created_shown_once_and_revoked(dashboard, browser):
    base, keys, _ = dashboard
    page = signed_in(browser, base, keys["admin"])
    page.click("nav >> text=API keys")
    page.fill("#create-key input[name=name]", "browser-made")
    page.fill("#create-key input[name=scopes]", "metrics")
    page.click("#create-key button")
    made = page.inner_text("#new-key code").strip()
    assert made.startswith("jm_")
    assert get(f"{base}/metrics", made)[0] == 200, "the new key works"
    screenshot(page, "keys")

    page.goto(f"{base}/ui/keys")
    assert made not in page.content(), "a key is shown once"
    row = page.locator("#keys tr", has_text="browser-made")
    row.locator("button", has_text="Revoke").click()
    page.wait_for_load_state()
    assert "browser-made" not in page.inner_text("#keys")
    assert get(f"{base}/metrics", made)[0] == 401, "the revoked key is refused"


def test_connections_list_the_backends_and_this_browser(dashboard, browser):
    base, keys, _ = dashboard
    page = signed_in(browser, base, keys["admin"])
    page.click("nav >> text=Connections")
    backends = page.inner_text("#backends")
    assert all(name in backends for name in ["compute", "data", "control"]), backends
    assert "key:" in page.inner_text("#clients"), "the browser's own connection, by the key signed in with"
    screenshot(page, "connections")


def test_no_session_or_a_forged_csrf_token_is_refused(dashboard, browser):
    base, keys, _ = dashboard
    assert get(f"{base}/ui/settings", None, accept="text/html")[0] == 303
    assert get(f"{base}/ui/events", None)[0] == 401
    assert post(f"{base}/ui/call", b'{"tool": "monitor_health"}', "application/json")[0] == 401

    page = signed_in(browser, base, keys["admin"])
    request = page.context.request
    forged = request.post(
        f"{base}/ui/call",
        data='{"tool": "manage_resources", "arguments": {"action": "list"}}',
        headers={"content-type": "application/json", "x-csrf-token": "forged"},
    )
    assert forged.status == 403
    no_token = request.post(f"{base}/ui/keys", form={"action": "create", "name": "x", "scopes": "admin"})
    assert no_token.status == 403
    token = page.get_attribute('meta[name="csrf"]', "content")
    allowed = request.post(
        f"{base}/ui/call",
        data='{"tool": "manage_resources", "arguments": {"action": "list"}}',
        headers={"content-type": "application/json", "x-csrf-token": token},
    )
    assert allowed.status == 200 and allowed.json()["ok"]


def test_a_narrow_key_sees_and_may_do_only_what_it_allows(dashboard, browser):
    base, keys, _ = dashboard
    page = signed_in(browser, base, keys["viewer"])
    nav = page.inner_text("nav")
    assert "Overview" in nav and not any(tab in nav for tab in ["API keys", "Playground", "Settings", "Models"])
    assert page.locator("#nodes .memory").count() == 1, "it may read the metrics"
    assert "not available" in page.inner_text("main"), "what it may not read says so"
    page.goto(f"{base}/ui/keys")
    assert "not available" in page.inner_text("main")
    token = page.get_attribute('meta[name="csrf"]', "content")
    refused = page.context.request.post(
        f"{base}/ui/call",
        data='{"tool": "manage_resources", "arguments": {"action": "unload", "model": "x"}}',
        headers={"content-type": "application/json", "x-csrf-token": token},
    )
    assert "forbidden" in refused.json()["error"], "the gateway refuses it at dispatch"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args):
        return None


def get(url, key, accept="*/*"):
    headers = {"Accept": accept}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return send(urllib.request.Request(url, headers=headers))


def post(url, body, content_type):
    return send(urllib.request.Request(url, data=body, headers={"Content-Type": content_type}))


def send(request):
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
