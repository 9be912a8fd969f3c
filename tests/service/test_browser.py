"""The status page in a real browser: Debian's chromium driven by Selenium (chromium-driver),
against a real ``atb serve``: log in with a token, submit, see an order fill live (pushed by
the WebSocket, no reload), cancel, and see another trader's order refused."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_proc import ServiceProc, auth, refusing_second_submit

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def page_svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProc]:
    tmp = Path(tmp_path_factory.mktemp("page"))
    p = ServiceProc(tmp, f"sqlite:///{tmp / 'atb.db'}")
    p.start()
    try:
        p.wait_ready()
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        how = (
            "needs Debian's chromium and chromium-driver: `apt-get install chromium "
            "chromium-driver` (.ci/run installs them and sets WAL_REQUIRE_BROWSER=1)"
        )
        if os.environ.get("WAL_REQUIRE_BROWSER"):  # CI: the browser test must run, never skip
            pytest.fail(how)
        pytest.skip(how)
    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: WebDriver, cond: object, timeout: float = 20) -> object:
    return WebDriverWait(driver, timeout).until(cond)  # type: ignore[arg-type]


# The table is re-rendered on every event: read it in one script, never hold its elements.
def row_state(driver: WebDriver, cid: str) -> str | None:
    script = "const r = document.getElementById(arguments[0]); return r && r.dataset.state;"
    state = driver.execute_script(script, f"order-{cid}")
    return None if state is None else str(state)


def rows(driver: WebDriver) -> list[tuple[str, str]]:
    """(order id, state) of every row."""
    script = (
        "return [...document.querySelectorAll('#orders tbody tr')]"
        ".map(r => [r.id.slice(6), r.dataset.state]);"
    )
    return [(str(i), str(st)) for i, st in driver.execute_script(script)]


def test_log_in_submit_see_it_fill_live_cancel_and_be_refused(
    page_svc: ServiceProc, browser: WebDriver
) -> None:
    alice, bob = page_svc.token("alice"), page_svc.token("bob")
    bobs = httpx.post(
        page_svc.url + "/api/v1/orders",
        json={"symbol": "MSFT", "side": "buy", "quantity": "1"},
        headers=auth(bob) | {"Idempotency-Key": uuid.uuid4().hex},
    ).json()["id"]

    browser.get(page_svc.url + "/")
    browser.find_element(By.ID, "token").send_keys(alice)
    browser.find_element(By.ID, "login-btn").click()
    wait(browser, lambda d: d.find_element(By.ID, "trader").text == "alice")
    wait(browser, lambda d: d.find_element(By.ID, "stream").text == "live")
    wait(browser, lambda d: d.find_element(By.ID, "ready").text == "ready")

    # submit a market order through the form: it is shown, filled
    browser.find_element(By.ID, "quantity").clear()
    browser.find_element(By.ID, "quantity").send_keys("2")
    browser.find_element(By.ID, "submit-btn").click()
    wait(browser, lambda d: [st for _, st in rows(d)] == ["filled"])

    # an order placed elsewhere (the API, same trader): the page learns of it from the
    # WebSocket alone, and sees it fill
    live = httpx.post(
        page_svc.url + "/api/v1/orders",
        json={"symbol": "AAPL", "side": "buy", "quantity": "1"},
        headers=auth(alice) | {"Idempotency-Key": uuid.uuid4().hex},
    ).json()["id"]
    wait(browser, lambda d: row_state(d, live) == "filled")
    wait(browser, lambda d: "AAPL" in d.find_element(By.ID, "positions").text)

    # a resting limit order, then cancelled with its button
    Select(browser.find_element(By.ID, "order_type")).select_by_visible_text("limit")
    browser.find_element(By.ID, "price").send_keys("50")
    browser.find_element(By.ID, "submit-btn").click()
    wait(browser, lambda d: "accepted" in [st for _, st in rows(d)])
    rid = next(i for i, st in rows(browser) if st == "accepted")
    browser.execute_script(
        "document.getElementById(arguments[0]).querySelector('button.cancel').click();",
        f"order-{rid}",
    )
    wait(browser, lambda d: row_state(d, rid) == "cancelled")

    # bob's order: refused to alice, and not listed
    browser.find_element(By.ID, "lookup-id").send_keys(bobs)
    browser.find_element(By.ID, "lookup-btn").click()
    wait(browser, lambda d: "forbidden" in d.find_element(By.ID, "error").text)
    assert row_state(browser, bobs) is None
    assert browser.find_element(By.ID, "lookup-result").text == ""


def test_an_unprotected_position_is_shown_on_the_page(tmp_path: Path, browser: WebDriver) -> None:
    """The broker refuses the stop-loss of a bracketed order (its 2nd submit): the page's
    protection status and the position's row say UNPROTECTED, with the reason."""
    svc = refusing_second_submit(tmp_path, "stops are closed")
    carol = svc.token("carol")
    svc.start()
    try:
        svc.wait_ready()
        browser.get(svc.url + "/")
        browser.execute_script("sessionStorage.clear();")
        browser.find_element(By.ID, "token").send_keys(carol)
        browser.find_element(By.ID, "login-btn").click()
        wait(browser, lambda d: d.find_element(By.ID, "trader").text == "carol")
        wait(browser, lambda d: d.find_element(By.ID, "protection").text == "ok")
        r = httpx.post(
            svc.url + "/api/v1/orders",
            json={"symbol": "UNPR", "side": "buy", "quantity": "2", "stop_loss": "90"},
            headers=auth(carol) | {"Idempotency-Key": uuid.uuid4().hex},
        )
        assert r.status_code == 201, r.text
        wait(browser, lambda d: "UNPROTECTED" in d.find_element(By.ID, "protection").text)
        status = browser.find_element(By.ID, "protection").text
        assert "UNPR stop_loss" in status and "stops are closed" in status
        wait(browser, lambda d: "UNPROTECTED" in d.find_element(By.ID, "positions").text)
        assert "stops are closed" in browser.find_element(By.ID, "positions").text
    finally:
        svc.stop()
