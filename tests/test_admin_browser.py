"""The admin page in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
driven by selenium): ``python -m heaper_trio admin-link`` run beside a running server prints
a link; the page opens signed in; clicking approve on a pending account lets that account log
in over HTTP. Also: a user-supplied string shows as text (no element, no script), a used link
and an expired link say so on the page.

One browser for the module. Selenium blocks, and the server runs in this test's trio loop, so
every browser call goes through a worker thread. The test skips only where no Chromium is
installed and ``HEAPER_TEST_REQUIRE_BROWSER`` is unset; ``scripts/test.sh`` sets it in full
runs, so CI cannot skip it silently.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
import trio

from heaper_trio import cli
from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient, LoginPending
from heaper_trio.services.admin_links import create_admin_link

from .auth_support import register_pending

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
XSS = "<img src=x onerror=alert(1)>"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def _have_browser() -> bool:
    return bool(shutil.which(CHROMIUM) and os.access(CHROMEDRIVER, os.X_OK))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not _have_browser():
        if os.environ.get("HEAPER_TEST_REQUIRE_BROWSER", "") not in ("", "0"):
            pytest.fail(
                f"HEAPER_TEST_REQUIRE_BROWSER is set but {CHROMIUM} or {CHROMEDRIVER} is missing"
            )
        pytest.skip("chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="heaper-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1400,1000"):
            options.add_argument(flag)
        # A driver path given to Service: Selenium Manager (which would download) never runs.
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        driver.set_page_load_timeout(30)
        try:
            yield driver
        finally:
            driver.quit()


async def in_browser(fn: Callable[..., Any], *args: Any) -> Any:
    return await trio.to_thread.run_sync(partial(fn, *args))


async def wait_for(driver: Any, find: Callable[[Any], Any], timeout: float = 10) -> Any:
    """Poll ``find(driver)`` (in a thread) until it answers something truthy."""
    with trio.fail_after(timeout):
        while True:
            found = await in_browser(find, driver)
            if found:
                return found
            await trio.sleep(0.05)


def _status(driver: Any) -> str:
    script = "const e = document.getElementById('status'); return e ? e.textContent : ''"
    return str(driver.execute_script(script))  # '' while a page loads


def _row_button(public_key: str, action: str) -> Callable[[Any], Any]:
    from selenium.webdriver.common.by import By

    def find(driver: Any) -> Any:
        found = driver.find_elements(
            By.CSS_SELECTOR, f'tr[data-public-key="{public_key}"] button[data-action="{action}"]'
        )
        return found[0] if found else None

    return find


async def admin_link_command(server: RunningServer) -> str:
    """``python -m heaper_trio admin-link`` beside the running server: its ``main`` in a thread
    of its own (its own trio run, storage and, on PostgreSQL, asyncio loop), which spares the
    interpreter start (seconds on a loaded CI machine) and still takes the command's whole
    path: arguments, settings, opening the database the server holds open."""
    settings = server.services.settings
    args = ["admin-link", "--data-dir", str(settings.data_path), "--public-url", server.url]
    if settings.database_url:
        args += ["--database-url", settings.database_url]
    out = io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out):
            return cli.main(args)

    assert await trio.to_thread.run_sync(run) == 0
    url = out.getvalue().strip()
    assert url.startswith(f"{server.url}/admin#"), url
    return url


# SQLite only: the page is the same on both engines, and admin-link and the admin routes are
# tested on PostgreSQL too (test_admin_cli.py, test_admin_routes.py).
@pytest.mark.engines("sqlite")
async def test_the_admin_page_approves_a_pending_user(
    browser: Any,
    server: RunningServer,
    admin: HeaperClient,
    make_client: Callable[..., HeaperClient],
) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    bob = make_client()
    with pytest.raises(LoginPending):
        await bob.login()
    mallory = await register_pending(server.url, XSS)
    url = await admin_link_command(server)

    await in_browser(browser.get, url)
    approve = await wait_for(browser, _row_button(bob.public_key, "approve"))
    assert "#" not in await in_browser(lambda: browser.current_url)  # the secret left the URL
    await in_browser(approve.click)
    await wait_for(browser, lambda d: "approve:" in _status(d) and _status(d))
    await bob.login()  # approved: tokens now
    assert (await bob.post("/api/me")).status_code == 200

    # The user-supplied string is text in its cell, not an element, and nothing ran.
    def email_cell(driver: Any) -> Any:
        row = driver.find_element(By.CSS_SELECTOR, f'tr[data-public-key="{mallory.public_key}"]')
        return row.find_elements(By.TAG_NAME, "td")[1].text, len(
            row.find_elements(By.TAG_NAME, "img")
        )

    assert await in_browser(email_cell, browser) == (XSS, 0)

    def no_alert(driver: Any) -> bool:
        try:
            driver.switch_to.alert  # noqa: B018 - raises when there is none
        except NoAlertPresentException:
            return True
        return False

    assert await in_browser(no_alert, browser)
    if os.environ.get("HEAPER_TEST_SCREENSHOT"):
        await in_browser(browser.save_screenshot, os.environ["HEAPER_TEST_SCREENSHOT"])

    # An access token the server refuses is renewed with the refresh token, and the click
    # still lands: revoke bob's tokens through the page.
    await in_browser(
        browser.execute_script,
        "const k = 'heaper-admin-session'; const s = JSON.parse(sessionStorage.getItem(k));"
        "s.access = 'not-a-token'; sessionStorage.setItem(k, JSON.stringify(s));",
    )
    revoke = await wait_for(browser, _row_button(bob.public_key, "revoke_tokens"))
    await in_browser(revoke.click)
    await wait_for(browser, lambda d: "revoke tokens:" in _status(d))
    assert (await bob.post("/api/me")).json()["error"] == "token_revoked"

    # The same link again: used. An expired one: says so.
    await in_browser(browser.execute_script, "sessionStorage.clear()")
    await in_browser(browser.get, "about:blank")  # else only the fragment changes
    await in_browser(browser.get, url)
    used = await wait_for(browser, lambda d: "used already" in _status(d) and _status(d))
    assert "admin-link" in used
    old = await create_admin_link(
        server.services.storage, server.services.settings, clock=lambda: 1000.0
    )
    # (its settings say port 0; the page is where the server listens.) Only the fragment
    # changes here: the page starts over with the new link (a link pasted into the same tab).
    await in_browser(browser.get, f"{server.url}/admin#{old.url.split('#', 1)[1]}")
    await wait_for(browser, lambda d: "expired" in _status(d))
    assert await in_browser(lambda: browser.find_element(By.ID, "signin").is_displayed())
