"""Refresh docs/dashboard.png: a gateway on the built-in model, a few hundred requests
through both protocols from three keys, then the dashboard in headless Chromium.

    .venv/bin/python scripts/dashboard-screenshot.py [docs/dashboard.png]
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

ADMIN = "llmgw-screenshot01-not-a-real-secret"
PROMPTS = ["Say hi.", "Name a colour.", "Count to three.", "What is 2+2?", "One word: sea."]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(data_dir: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _port()
    env = {**os.environ, "GATEWAY_ADMIN_KEY": ADMIN, "LOG_LEVEL": "WARNING"}
    cmd = [sys.executable, "-m", "llm_gateway", "serve", "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--data-dir", data_dir, "--usage-flush-interval-s", "0.2"], env=env
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.terminate()
    raise SystemExit("the gateway did not become ready")


def _traffic(base: str, total: int) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    keys = []
    for owner in ("alice", "bob", "carol"):
        made = httpx.post(
            f"{base}/api/keys", json={"name": f"{owner}-app", "owner": owner}, headers=admin
        )
        keys.append({"Authorization": f"Bearer {made.json()['key']}"})

    def one(i: int) -> None:
        auth = random.choice(keys)
        msg = [{"role": "user", "content": random.choice(PROMPTS)}]
        n = random.randint(4, 24)
        with httpx.Client(base_url=base, headers=auth, timeout=120) as c:
            if i % 3 == 0:
                c.post(
                    "/api/chat",
                    json={
                        "model": "smollm2",
                        "messages": msg,
                        "stream": False,
                        "options": {"num_predict": n},
                    },
                )
            elif i % 17 == 0:
                c.post("/v1/chat/completions", json={"model": "no-such-model", "messages": msg})
            else:
                c.post(
                    "/v1/chat/completions",
                    json={"model": "smollm2", "messages": msg, "max_tokens": n},
                )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(total)))


def _shoot(base: str, out: str) -> None:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1100"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(f"{base}/dashboard")
        driver.find_element(By.ID, "key").send_keys(ADMIN)
        driver.find_element(By.ID, "signin").click()
        wait = WebDriverWait(driver, 30)
        wait.until(ec.visibility_of_element_located((By.ID, "app")))
        wait.until(lambda d: d.find_element(By.ID, "total-requests").text not in ("–", "0"))
        time.sleep(2)
        driver.save_screenshot(out)
    finally:
        driver.quit()


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else "docs/dashboard.png"
    with tempfile.TemporaryDirectory() as data_dir:
        proc, base = _start(data_dir)
        try:
            _traffic(base, 300)
            time.sleep(1)
            _shoot(base, out)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
