"""The admin dashboard, end to end in headless Chromium (Debian's chromium + chromedriver)
against a real gateway process: sign-in, usage from both protocols, charts, the key list."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import ADMIN_KEY, AUTH, start_gateway

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOT = os.environ.get("LLMGW_DASHBOARD_SCREENSHOT")  # docs/dashboard.png is made so


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[str]:
    env = {**os.environ, "GATEWAY_ADMIN_KEY": ADMIN_KEY, "LOG_LEVEL": "WARNING"}
    args = ["--engine-dummy", "--data-dir", str(tmp_path), "--usage-flush-interval-s", "0.1"]
    proc, base = start_gateway(args, env)
    try:
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    assert os.path.exists(CHROMIUM), "install Debian's chromium (see .ci/run)"
    assert os.path.exists(CHROMEDRIVER), "install Debian's chromium-driver (see .ci/run)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1100"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _text(driver: webdriver.Chrome, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def test_dashboard_shows_usage_from_both_protocols(gateway: str, browser: webdriver.Chrome) -> None:
    with httpx.Client(base_url=gateway, headers=AUTH) as c:
        user = c.post("/api/keys", json={"name": "browser-test", "owner": "carol"}).json()
        carol = {"Authorization": f"Bearer {user['key']}"}
        chat = {"model": "dummy", "messages": [{"role": "user", "content": "hello"}]}
        for _ in range(3):
            assert c.post("/v1/chat/completions", json=chat, headers=carol).status_code == 200
        assert c.post("/api/chat", json={**chat, "stream": False}, headers=carol).status_code == 200
        assert c.post("/v1/chat/completions", json={**chat, "model": "nope"}).status_code == 404

    wait = WebDriverWait(browser, 20)
    browser.get(f"{gateway}/dashboard")
    # A user key is not enough.
    browser.find_element(By.ID, "key").send_keys(user["key"])
    browser.find_element(By.ID, "signin").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "error"), "not an admin key"))
    assert not browser.find_element(By.ID, "app").is_displayed()

    key = browser.find_element(By.ID, "key")
    key.clear()
    key.send_keys(ADMIN_KEY)
    browser.find_element(By.ID, "signin").click()
    wait.until(ec.visibility_of_element_located((By.ID, "app")))
    wait.until(lambda d: _text(d, "total-requests") not in ("–", "0"))

    models = _text(browser, "models-table")
    assert "dummy" in models
    row = next(r for r in models.splitlines() if r.startswith("dummy"))
    assert row.split()[1] == "4"  # 3 OpenAI + 1 Ollama requests on the dummy model
    assert "carol" in _text(browser, "top-keys-table")
    assert "not_found_error" in _text(browser, "errors-table")
    keys = _text(browser, "keys-table")
    assert "browser-test" in keys and "carol" in keys
    assert "ms" in _text(browser, "latency-p50")
    # The charts drew a series for the dummy model.
    series = browser.find_elements(By.CSS_SELECTOR, "#chart-requests [data-series='dummy']")
    assert series, browser.find_element(By.ID, "chart-requests").get_attribute("outerHTML")
    assert "dummy" in _text(browser, "legend-requests")
    if SCREENSHOT:
        browser.save_screenshot(SCREENSHOT)

    # Signing out forgets the key.
    browser.find_element(By.ID, "signout").click()
    assert browser.find_element(By.ID, "login").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('llmgw-admin-key')") is None
