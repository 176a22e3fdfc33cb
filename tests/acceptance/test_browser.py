"""The admin console and the live dashboard in a real headless browser:
Debian's Chromium driven by Playwright, against a live test server and real
Celery workers. Takes the consoles page's screenshots (into docs/ with
OPS_WRITE_SCREENSHOTS=1)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connections

from operations import lifecycle
from operations.models import Operation
from tests.conftest import PROJECT_DIR, wait_for
from tests.consoles import CHROMIUM_ARGS, make, require_chromium, staff_user

pytestmark = pytest.mark.workers

# The screenshots of docs/consoles.md: written into docs/ when asked
# (OPS_WRITE_SCREENSHOTS=1), else beside the run, so a test run leaves the tree clean.
DOCS = (
    PROJECT_DIR / "docs" if os.environ.get("OPS_WRITE_SCREENSHOTS") else Path(tempfile.gettempdir()) / "ops-screenshots"
)
TIMEOUT_MS = 30_000


@pytest.fixture
def browser_page(live_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A logged-in admin page in headless Chromium (a superuser, "root")."""
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; the test's own
    # ORM calls are still plain synchronous calls, so Django may allow them.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    executable = require_chromium()
    staff_user("root", superuser=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1680, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        # Only the live server: anything else the page asks for would be a
        # dependency on the internet (a CDN script, a web font).
        outside: list[str] = []

        def guard(route: Any) -> None:
            if route.request.url.startswith(live_server.url):
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        page.route("**/*", guard)
        page.goto(f"{live_server.url}/admin/login/")
        page.fill("#id_username", "root")
        page.fill("#id_password", "pw-root")
        page.click("input[type=submit]")
        page.wait_for_selector("#site-name")
        try:
            yield page
        finally:
            browser.close()
            # While Playwright's loop runs, Django keeps this thread's database
            # connections per async context: the test's queries had their own.
            connections.close_all()
    assert outside == [], f"the page reached beyond the test server: {outside}"


def screenshot(page: Any, name: str) -> Path:
    DOCS.mkdir(exist_ok=True)
    path = DOCS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def badge_of(page: Any, operation: Operation) -> str:
    row = page.locator(f"tr:has(input[value='{operation.pk}'])")
    return str(row.locator(".ops-badge").inner_text())


def test_admin_filter_cancel_and_no_add(browser_page: Any, live_server: Any, alpha: Any, beta: Any) -> None:
    page = browser_page
    # A varied list, for the eye and the screenshot.
    pending = [make(tag="nightly"), make(operation_type="test_sleep", document_id="doc-7")]
    running = make(status="processing", progress={"stage": "extract", "processed": 6, "total": 10})
    make(status="completed", progress={"stage": "done", "processed": 4, "total": 4})
    failed = make(bank="beta", status="failed")
    make(operation_type="test_sleep", status="cancelled")
    page.goto(f"{live_server.url}/admin/")
    assert page.locator("#ops-dashboard-link a").inner_text() == "Operations dashboard"
    assert page.locator("text=Task results").count() == 0 and page.locator("text=Group results").count() == 0
    page.click("a[href='/admin/operations/operation/']")
    page.wait_for_selector("#result_list")
    # No "add": neither the list's button nor the sidebar's link (other models keep theirs).
    assert page.locator(".object-tools a.addlink").count() == 0
    assert page.locator("#nav-sidebar .model-operation a.addlink").count() == 0
    assert page.locator("#nav-sidebar .model-bank a.addlink").count() == 1
    assert page.locator("a[href$='/operations/operation/add/']").count() == 0
    assert page.locator("#result_list .ops-progress[data-percent='60']").count() == 1
    screenshot(page, "admin-operations.png")
    # Filter by status, through the filter sidebar.
    page.click("#changelist-filter a:text-is('Pending')")
    page.wait_for_url("**status__exact=pending**")
    badges = page.locator("#result_list .ops-badge").all_inner_texts()
    assert badges == ["pending", "pending"]
    assert page.locator(f"input[value='{running.pk}']").count() == 0
    assert page.locator(f"input[value='{failed.pk}']").count() == 0
    # Cancel one pending operation with the admin action.
    target = pending[0]
    page.check(f"input[name='_selected_action'][value='{target.pk}']")
    page.select_option("select[name='action']", "cancel_operations")
    page.click("button[name='index']")
    page.wait_for_selector("ul.messagelist li.success")
    assert page.locator("ul.messagelist li.success").inner_text() == "Cancelled 1 operation."
    assert Operation.objects.get(pk=target.pk).status == "cancelled"
    # Back on the pending filter, it is gone; under "Cancelled" it shows as cancelled.
    assert page.locator(f"input[value='{target.pk}']").count() == 0
    page.click("#changelist-filter a:text-is('Cancelled')")
    page.wait_for_url("**status__exact=cancelled**")
    assert badge_of(page, target) == "cancelled"
    # Its own page says so, and offers a retry button (not a cancel one).
    page.click(f"#result_list a[href^='/admin/operations/operation/{target.pk}/change/']")
    page.wait_for_url(f"**/{target.pk}/change/**")
    assert page.locator(".field-badge .ops-badge").inner_text() == "cancelled"
    assert page.locator("button.ops-transition").all_text_contents() == ["Retry"]
    # Drawn as the admin's own object tools (its History link).
    look = "e => { const s = getComputedStyle(e); return [s.borderRadius, s.backgroundColor, s.color, s.textTransform, s.fontSize]; }"
    assert page.locator("button.ops-transition").evaluate(look) == page.locator("a.historylink").evaluate(look)
    screenshot(page, "admin-operation-retry-button.png")
    # The admin log ("History") names the action.
    page.click("a.historylink[href*='/history/']")
    page.wait_for_url(f"**/{target.pk}/history/**")
    assert page.locator("#change-history").inner_text().count("Cancelled from the admin console (it was pending)") == 1


def test_dashboard_progress_moves_without_reload(
    browser_page: Any, live_server: Any, start_workers: Any, settings: Any, alpha: Any
) -> None:
    settings.OPS_DASHBOARD_REFRESH_SECONDS = 0.5
    page = browser_page
    # Something for the "latest failures" panel, failed before any worker
    # runs: a real worker would otherwise take its message before `make` claims it.
    make(status="failed")
    start_workers(ready=2, OPS_WORKER_MAX_SLOTS="2")
    # 40 progress reports, 0.25 s apart: about ten seconds of visible progress.
    operation = lifecycle.operation_submit(
        bank_id="alpha", operation_type="test_dbloop", payload={"steps": 40, "pause": 0.25}
    ).operation
    page.goto(f"{live_server.url}/admin/")
    page.click("#ops-dashboard-link a")
    page.wait_for_url("**/admin/dashboard/")
    # A mark on the page's window: a full reload would wipe it.
    page.evaluate("window.__notReloaded = true")
    bar = page.locator(f"#ops-running tr[data-operation-id='{operation.pk}'] .ops-progress")
    bar.wait_for()
    first = int(bar.get_attribute("data-percent") or 0)
    page.wait_for_function(
        "([selector, first]) => { const el = document.querySelector(selector);"
        " return el && Number(el.dataset.percent) > first; }",
        arg=[f"#ops-running tr[data-operation-id='{operation.pk}'] .ops-progress", first],
    )
    later = int(bar.get_attribute("data-percent") or 0)
    assert later > first
    assert page.evaluate("window.__notReloaded") is True
    # For the documented picture: a bar well under way.
    page.wait_for_function(
        "selector => Number(document.querySelector(selector)?.dataset.percent) >= 30",
        arg=f"#ops-running tr[data-operation-id='{operation.pk}'] .ops-progress",
    )
    # The slots panel shows this node's shared pool busy with it.
    assert page.locator("#ops-nodes table[data-node='testnode'] tr[data-worker='shared@testnode']").count() == 1
    screenshot(page, "dashboard.png")
    # A hidden tab sends no request; becoming visible again refreshes at once.
    page.evaluate(
        "Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => 'hidden'});"
        "document.dispatchEvent(new Event('visibilitychange'));"
    )
    page.wait_for_timeout(1_000)  # lets a request sent just before hiding report itself first
    panel_requests: list[str] = []
    page.on("request", lambda r: panel_requests.append(r.url) if "/dashboard/panels/" in r.url else None)
    page.wait_for_timeout(2_000)  # four refresh periods
    assert panel_requests == []
    with page.expect_request("**/dashboard/panels/"):
        page.evaluate(
            "Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => 'visible'});"
            "document.dispatchEvent(new Event('visibilitychange'));"
        )
    assert page.evaluate("window.__notReloaded") is True
    # The run ends; the dashboard moves it out of "running" by itself.
    wait_for(
        lambda: Operation.objects.get(pk=operation.pk).status == "completed",
        timeout=60,
        message="the dbloop operation to complete",
    )
    page.wait_for_selector(f"#ops-running tr[data-operation-id='{operation.pk}']", state="detached")
    assert os.path.getsize(DOCS / "dashboard.png") > 10_000


def test_the_api_docs_render_with_no_internet(browser_page: Any, live_server: Any) -> None:
    """Swagger UI at /v1/docs draws the schema's operations from the
    platform's own assets (the fixture refuses every request elsewhere)."""
    page = browser_page
    page.goto(f"{live_server.url}/v1/docs")
    page.wait_for_selector(".swagger-ui .info .title")
    assert "Operations platform API" in page.inner_text(".swagger-ui .info .title")
    page.wait_for_selector(".opblock-summary-path")
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert any("/v1/default/banks/{bank_id}/operations" in path for path in paths)
    screenshot(page, "api-docs.png")
