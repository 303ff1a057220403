"""The app in a real browser: Debian's Chromium driven by Playwright.

Starts ``streamlit run viz_app/app.py`` headless on 127.0.0.1, opens every page,
steps and plays the forward animation, checks that the counters on screen
change and equal the library's, uploads a bad and a good file, saves a
screenshot of each page (into a temporary folder; into docs/screenshots/ with
REFATTN_UPDATE_SCREENSHOTS=1, see conftest.py), and prints how long the first
render of each page and one step update took (goal: page < 3 s, step < 300 ms
once Numba's cache is warm).
"""

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.optional import require

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
IN_CI = os.environ.get("REFATTN_REQUIRE_OPTIONAL") == "1"
PAGES = ["forward", "backward", "io", "minference", "vitcod", "inputs"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    if not Path(CHROMIUM).exists():
        if IN_CI:
            pytest.fail(f"{CHROMIUM} is missing; .ci/run installs Debian's chromium package")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    port = _free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "viz_app" / "app.py"), "--server.headless", "true",
           "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"streamlit did not start: {proc.stdout.read()[-2000:]}")
        time.sleep(0.3)
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def browser_page(server):
    sync_api = require("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1500, "height": 1900})
        page.set_default_timeout(120_000)
        yield page
        browser.close()


def wait_idle(page, timeout=120_000):
    """Wait until Streamlit has finished the current run (no 'Running...' status, no spinner)."""
    page.wait_for_timeout(150)
    page.wait_for_function(
        """() => {
            const app = document.querySelector('[data-testid="stApp"]');
            if (!app) return false;
            const status = document.querySelector('[data-testid="stStatusWidget"]');
            const running = status && /Running|Stop/i.test(status.innerText);
            return !running && !document.querySelector('[data-testid="stSpinner"]');
        }""", timeout=timeout)


def wait_drawn(page, timeout=120_000):
    """Wait until no element is a loading skeleton and every Plotly chart has drawn its SVG."""
    page.wait_for_function(
        """() => !document.querySelector('[data-testid="stSkeleton"]') &&
            [...document.querySelectorAll('[data-testid="stPlotlyChart"]')].every(c => c.querySelector('.main-svg'))""",
        timeout=timeout)


def metric_value(page, label: str) -> int:
    box = page.locator('[data-testid="stMetric"]').filter(has_text=label).first
    return int(box.locator('[data-testid="stMetricValue"]').inner_text().replace(",", ""))


#: An element each page draws last: the page counts as rendered when it is there and charts are drawn.
H1 = {"forward": "FlashAttention forward", "backward": "Backward", "io": "IO complexity",
      "minference": "MInference", "vitcod": "ViTCoD", "inputs": "Inputs"}
READY = {
    "forward": '[data-testid="stTable"]', "backward": '[data-testid="stTable"]', "io": '[data-testid="stTable"]',
    "minference": '[data-testid="stTable"]', "vitcod": '[data-testid="stTable"]', "inputs": '[data-testid="stFileUploader"]',
}


TITLES = {"forward": "FlashAttention forward", "backward": "Backward", "io": "IO complexity",
          "minference": "MInference", "vitcod": "ViTCoD", "inputs": "Inputs (upload)"}


def open_page(page, url, name, timings, *, via_sidebar=False):
    t0 = time.perf_counter()
    if via_sidebar:  # as a user does: the app stays loaded, only the page's script runs
        page.locator('[data-testid="stSidebarNav"] a').filter(has_text=TITLES[name]).first.click()
        page.wait_for_function("""(title) => [...document.querySelectorAll('h1')].some(h => h.innerText.includes(title))""",
                               arg=H1[name])
    else:
        page.goto(f"{url}/{'' if name == 'forward' else name}")  # the default page lives at the root
    page.locator("h1").first.wait_for()
    page.locator(READY[name]).first.wait_for()
    wait_idle(page)
    wait_drawn(page)
    timings[name] = time.perf_counter() - t0
    assert not page.locator('[data-testid="stException"]').count(), page.locator(
        '[data-testid="stException"]').first.inner_text()


def shot(page, folder, name):
    wait_drawn(page)
    page.wait_for_timeout(300)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def test_every_page_in_the_browser(server, browser_page, screenshot_dir):
    import refattn
    from refattn.data import random_qkv

    page, url, timings = browser_page, server, {}

    # --- page 1: forward; step, play, counters against the library
    open_page(page, url, "forward", timings)
    q, k, v = random_qkv(64, 16, seed=0)
    flash = refattn.flash_forward(q, k, v, sram=1024, variant="fa2", trace=True)
    assert metric_value(page, "flash HBM reads") == flash.trace.traffic_until(0).total_reads
    step_times = []
    for step in (1, 2, 3):  # one step update: click -> the counter on screen shows the new value
        before = metric_value(page, "flash HBM reads")
        t0 = time.perf_counter()
        page.locator(".st-key-fwd_fwd button").click()
        page.wait_for_function(
            """([label, before]) => [...document.querySelectorAll('[data-testid="stMetric"]')]
                .some(m => m.innerText.includes(label) &&
                      parseInt(m.querySelector('[data-testid="stMetricValue"]').innerText.replace(/,/g, '')) !== before)""",
            arg=["flash HBM reads", before])
        step_times.append(time.perf_counter() - t0)
        wait_idle(page)
        after = metric_value(page, "flash HBM reads")
        assert after > before and after == flash.trace.traffic_until(step).total_reads
        assert metric_value(page, "flash HBM writes") == flash.trace.traffic_until(step).total_writes
    timings["one step (median of 3)"] = sorted(step_times)[1]
    shot(page, screenshot_dir, "forward")

    page.locator(".st-key-fwd_play label").click()  # play: the fragment advances on its own
    page.wait_for_timeout(3000)
    page.locator(".st-key-fwd_play label").click()  # pause
    wait_idle(page)
    played = metric_value(page, "flash HBM reads")
    steps = [flash.trace.traffic_until(s).total_reads for s in range(flash.n_steps + 1)]
    assert played > after and played in steps

    page.locator(".st-key-fwd_end button").click()
    wait_idle(page)
    page.wait_for_timeout(300)
    assert metric_value(page, "flash HBM reads") == flash.traffic.total_reads

    # --- page 2: backward
    open_page(page, url, "backward", timings)
    if page.locator('[data-testid="stMetric"]').count():
        b0 = metric_value(page, "flash HBM reads")
        page.locator(".st-key-bwd_fwd button").click()
        page.wait_for_timeout(300)
        wait_idle(page)
        assert metric_value(page, "flash HBM reads") > b0
    shot(page, screenshot_dir, "backward")

    # --- page 3: IO explorer
    open_page(page, url, "io", timings)
    assert page.locator('[data-testid="stTable"]').count() >= 1
    shot(page, screenshot_dir, "io")

    # --- pages 4, 5
    for name in ("minference", "vitcod"):
        open_page(page, url, name, timings)
        shot(page, screenshot_dir, name)

    # --- page 6: uploads (a bad file gives a message, a good one is accepted)
    open_page(page, url, "inputs", timings)
    upload = page.locator('[data-testid="stFileUploader"] input[type="file"]')
    upload.set_input_files(files=[{"name": "bad.npy", "mimeType": "application/octet-stream",
                                   "buffer": b"this is not a numpy file"}])
    page.get_by_text("Could not use this file").wait_for()
    wait_idle(page)
    buf = io.BytesIO()
    np.savez(buf, q=q[:32], k=k[:32], v=v[:32])
    upload.set_input_files(files=[{"name": "qkv.npz", "mimeType": "application/octet-stream",
                                   "buffer": buf.getvalue()}])
    page.get_by_text("Q/K/V accepted").wait_for()
    wait_idle(page)
    page.wait_for_timeout(500)
    assert not page.locator('[data-testid="stException"]').count()
    shot(page, screenshot_dir, "inputs")

    # second visits through the sidebar: the server's st.cache_data is warm and the app stays loaded
    for name in PAGES:
        open_page(page, url, name, revisit := {}, via_sidebar=True)
        timings[f"{name} again"] = revisit[name]

    print("\nbrowser timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))
    for name in PAGES:
        assert (screenshot_dir / f"{name}.png").stat().st_size > 10_000
