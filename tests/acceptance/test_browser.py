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


def row_of(page: Any, operation: Operation) -> Any:
    return page.locator(f"#result_list tr:has(.ops-id[title='{operation.pk}'])")


def badge_of(page: Any, operation: Operation) -> str:
    row = row_of(page, operation)
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
    assert page.locator("#content-main .model-operation a.addlink").count() == 0
    assert page.locator("#content-main .model-bank a.addlink").count() == 1
    assert page.locator("text=Task results").count() == 0 and page.locator("text=Group results").count() == 0
    page.click("a[href='/admin/operations/operation/']")
    page.wait_for_selector("#result_list")
    # No "add": neither the list's button nor the index's link (other models keep theirs);
    # the list has the whole window (no navigation sidebar).
    assert page.locator(".object-tools a.addlink").count() == 0
    assert page.locator("#nav-sidebar").count() == 0
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


def test_admin_list_and_page_update_running_rows_live(
    browser_page: Any, live_server: Any, settings: Any, alpha: Any
) -> None:
    settings.OPS_DASHBOARD_REFRESH_SECONDS = 0.5
    page = browser_page
    # As a user who may look and not act (no action checkboxes on the list).
    staff_user("viewer", "operations.view_operation")
    page.context.clear_cookies()  # root's session gone
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "viewer")
    page.fill("#id_password", "pw-viewer")
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")
    waiting = make()
    finished = make(status="completed")
    page.goto(f"{live_server.url}/admin/operations/operation/")
    page.wait_for_selector("#result_list")
    page.evaluate("window.__notReloaded = true")
    assert badge_of(page, waiting) == "pending"
    # A worker takes it and reports progress: the row follows, the page stays.
    lease = lifecycle.operation_claim(operation_id=str(waiting.pk), worker="shared@node9", task_id="t")
    assert lease is not None
    lifecycle.operation_progress(lease=lease, progress={"stage": "extract", "processed": 3, "total": 4})
    assert page.locator("input.action-select").count() == 0
    row = row_of(page, waiting)
    row.locator(".ops-badge[data-status='processing']").wait_for()
    row.locator(".ops-progress[data-percent='75']").wait_for()
    assert row.locator("td.field-worker").inner_text() == "shared@node9"
    assert badge_of(page, finished) == "completed"
    assert page.evaluate("window.__notReloaded") is True
    # Its own page follows it too, and shows the result once it finished.
    page.goto(f"{live_server.url}/admin/operations/operation/{waiting.pk}/change/")
    assert page.locator(".field-badge .ops-badge").inner_text() == "processing"
    lifecycle.operation_complete(lease=lease, result={"units": 4})
    page.locator(".field-badge .ops-badge[data-status='completed']").wait_for()
    assert "units" in page.locator(".field-result").inner_text()


def test_dashboard_pauses_a_type_after_asking_and_draws_its_history(
    browser_page: Any, live_server: Any, alpha: Any, beta: Any
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from operations.models import MetricsWatermark

    page = browser_page
    # A day of history: operations that finished over the last hours and minutes.
    now = timezone.now()
    MetricsWatermark.objects.create(pk=1, counted_until=now - timedelta(days=1))
    for n in range(40):
        done = make(status="completed" if n % 7 else "failed", bank="beta" if n % 7 == 0 else "alpha")
        ago = timedelta(minutes=2 + (n * 37) % 55) if n % 3 else timedelta(hours=1 + n % 20)
        Operation.objects.filter(pk=done.pk).update(completed_at=now - ago)
    make()
    page.goto(f"{live_server.url}/admin/dashboard/")
    page.wait_for_selector("#ops-actions")
    page.select_option("#ops-pause-form select[name='operation_type']", "test_sleep")
    page.click("#ops-pause-form input[value='Pause…']")
    page.wait_for_url("**/dashboard/actions/pause/**")
    assert "nothing of it is published or claimed" in page.locator("#content-main").inner_text()
    page.click("#ops-confirm")
    page.wait_for_url("**/admin/dashboard/")
    assert "Pause the dispatch of a type" in page.locator("ul.messagelist li.success").inner_text()
    page.locator("tr[data-type='test_sleep'] .ops-badge:text-is('paused')").wait_for()
    assert "pause" in page.locator("#ops-recent-actions").inner_text()
    assert page.locator("#ops-pending-banks tr[data-bank='alpha']").inner_text().split() == ["alpha", "1"]
    assert "boom: the extractor gave up (stage: extract)" in page.locator("#ops-failure-groups").inner_text()
    # The charts: 60 minutes and 24 hours, each with bars (the rollup counts once settled).
    assert page.locator("#ops-chart-1 .ops-chart-bar").count() == 60
    assert page.locator("#ops-chart-2 .ops-chart-bar").count() == 24
    drawn = page.locator("#ops-chart-2 .ops-chart-bar").evaluate_all(
        "bars => bars.map(b => +b.dataset.completed + +b.dataset.failed).reduce((a, b) => a + b, 0)"
    )
    assert drawn == 40  # every one of them, in its hour
    screenshot(page, "dashboard-history.png")


def overflow(page: Any) -> float:
    """How far the widest list column reaches past its container (<= 0: it fits)."""
    return float(
        page.evaluate(
            """() => {
            const table = document.querySelector('#result_list');
            const box = table.closest('.results') || table.parentElement;
            const right = Math.max(...[...table.querySelectorAll('th, td')].map(c => c.getBoundingClientRect().right));
            return Math.max(right - box.getBoundingClientRect().right, document.documentElement.scrollWidth - window.innerWidth);
        }"""
        )
    )


def test_console_lists_fit_1400_pixels_and_children_need_no_caption(
    browser_page: Any, live_server: Any, alpha: Any, beta: Any
) -> None:
    from tenancy.api_keys import api_key_create

    page = browser_page
    page.set_viewport_size({"width": 1400, "height": 900})
    make(tag="nightly-import-of-the-whole-quarterly-archive-" + "x" * 40)
    running = make(status="processing", progress={"stage": "extract", "processed": 1, "total": 3})
    Operation.objects.filter(pk=running.pk).update(worker="shared@worker-node-with-a-long-host-name.example.internal")
    make(bank="beta", status="failed")
    api_key_create(name="a key for the nightly importer of the archive", bank_ids=["alpha", "beta"])
    parent, _ = lifecycle.operation_submit_parent(
        bank_id="alpha",
        operation_type="retain_batch",
        children=[lifecycle.Child("test_echo", {"value": n}) for n in range(3)],
    )
    for url in (
        "/admin/operations/operation/",
        "/admin/operations/operation/?status__exact=failed",
        "/admin/tenancy/bank/",
        "/admin/tenancy/apikey/",
    ):
        page.goto(f"{live_server.url}{url}")
        page.wait_for_selector("#result_list")
        print(
            url,
            page.evaluate(
                "() => [...document.querySelectorAll('#result_list thead th')].map(c => c.className + ':' + Math.round(c.getBoundingClientRect().width)).join(' ') + ' | sidebar ' + Math.round(document.querySelector('#nav-sidebar')?.getBoundingClientRect().width || 0) + ' filter ' + Math.round(document.querySelector('#changelist-filter')?.getBoundingClientRect().width || 0) + ' results ' + Math.round(document.querySelector('.results')?.getBoundingClientRect().width || 0)"
            ),
        )
        assert overflow(page) <= 0, url
    screenshot(page, "admin-keys-1400.png")
    page.goto(f"{live_server.url}/admin/operations/operation/{parent.pk}/change/")
    rows = page.locator(".ops-children tbody tr.has_original")
    assert rows.count() == 3
    assert page.locator(".ops-children td.original p").first.is_visible() is False
