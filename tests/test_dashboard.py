"""The web dashboard: a real daemon on the simulated lab, real HTTP, and a real headless Chromium.

The browser tests need Debian's chromium (`apt-get install chromium`) and the playwright package
(`pip install -e '.[dev]'`); without them they skip and say so. Nothing here asserts on timing:
every wait is for a condition, with a generous limit for a busy machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import h5py
import pytest

from qnode.host.client import Subscriber
from qnode.host.config import ConfigError, Dashboard, load_config, parse_config
from qnode.host.daemon import Daemon

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "build" / "dashboard.png"
TOKEN = "test-token-4f1c"
WAIT_MS = 30_000  # a condition the page must reach; generous for a shared 2-core machine


def sim_config(port: int = 0):
    cfg = load_config()
    cfg.dashboard.enabled = True
    cfg.dashboard.port = port
    cfg.dashboard.token = TOKEN
    cfg.dashboard.token_env = None
    return cfg


def start_daemon(cfg) -> Daemon:
    return Daemon(cfg, control_url="tcp://127.0.0.1:0", stream_url="tcp://127.0.0.1:0").start()


@pytest.fixture(scope="module")
def daemon():
    d = start_daemon(sim_config())
    assert d.dashboard is not None, "the dashboard did not start"
    yield d
    d.close()


def post_action(daemon, body: dict, headers: dict | None = None) -> tuple[int, dict | str]:
    request = urllib.request.Request(daemon.dashboard.url + "api/action", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", **(headers or {})}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        text = exc.read().decode()
        return exc.code, json.loads(text) if text.startswith("{") else text


def log_messages(sub: Subscriber, until: str, limit: int = 200) -> list[str]:
    """Log lines from the daemon's `log` stream until one contains ``until``."""
    seen = []
    for _ in range(limit):
        msg = sub.receive(timeout_s=10)
        assert msg is not None, f"no log line containing {until!r}; saw {seen}"
        seen.append(msg[1]["message"])
        if until in seen[-1]:
            return seen
    raise AssertionError(f"no log line containing {until!r} in {limit}; saw {seen[-5:]}")


# --- config, token and actions over plain HTTP (no browser needed) -------------------------------


def test_every_dashboard_key_is_documented():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    section = doc.split("## `[dashboard]`", 1)[1].split("\n## ", 1)[0]
    missing = [key for key in Dashboard.model_fields if f"| `{key}` |" not in section]
    assert not missing, f"docs/configuration.md [dashboard] does not describe: {missing}"


def test_config_takes_token_or_token_env_not_both():
    text = (ROOT / "lab_configs" / "sim.toml").read_text()
    assert load_config().dashboard.token_env == "QNODE_DASHBOARD_TOKEN"
    both = text.replace('token_env = "QNODE_DASHBOARD_TOKEN"', 'token_env = "X"\ntoken = "0123456789"')
    with pytest.raises(ConfigError, match=r"x.toml: dashboard: set token or token_env, not both"):
        parse_config(both, "x.toml")
    with pytest.raises(ConfigError, match=r"dashboard.bind"):
        parse_config(text.replace("\nport = 8050\n", "\nport = 8050\nbind = 1\n"), "x.toml")


def test_no_token_configured_means_every_action_is_refused(monkeypatch):
    cfg = load_config()  # token_env = QNODE_DASHBOARD_TOKEN
    monkeypatch.delenv("QNODE_DASHBOARD_TOKEN", raising=False)
    d = Daemon(cfg)
    try:
        assert d.dashboard_token is None
        assert not d.dashboard_token_ok("") and not d.dashboard_token_ok("anything") and not d.dashboard_token_ok(None)
    finally:
        d.ctx.destroy()
    monkeypatch.setenv("QNODE_DASHBOARD_TOKEN", "from-the-environment")
    d = Daemon(cfg)
    try:
        assert d.dashboard_token_ok("from-the-environment")
        assert not d.dashboard_token_ok("from-the-environmenT") and not d.dashboard_token_ok(None)
    finally:
        d.ctx.destroy()


def test_actions_need_the_token_and_each_is_logged_with_who(daemon):
    with Subscriber(daemon.stream_url, topics=["log"]) as sub:
        sub.receive(timeout_s=0.5)  # let the subscription reach the daemon
        status, reply = post_action(daemon, {"method": "record.start", "params": {}, "user": "mallory"})
        assert status == 403 and reply["error"]["type"] == "Forbidden"
        assert daemon.recorder is None
        lines = log_messages(sub, "mallory")
        assert re.search(r"action by mallory at 127\.0\.0\.1: record\.start \{\} -> refused: wrong or missing token",
                         lines[-1]), lines[-1]

        status, reply = post_action(daemon, {"method": "record.stop", "token": TOKEN[:-1] + "x", "user": "eve"})
        assert status == 403 and "refused" in log_messages(sub, "eve")[-1]

        # With the token the action reaches the daemon, and its own error comes back.
        status, reply = post_action(daemon, {"method": "record.stop", "token": TOKEN, "user": "bob"})
        assert status == 409 and reply["error"]["type"] == "NotRecording"
        assert "action by bob at 127.0.0.1: record.stop {} -> failed: NotRecording" in log_messages(sub, "bob")[-1]

    # The dashboard is no back door to the rest of the control API.
    status, reply = post_action(daemon, {"method": "stop", "token": TOKEN})
    assert status == 400 and reply["error"]["type"] == "NotAnAction"
    assert not daemon.wait(0)


def test_pages_of_other_sites_cannot_act_or_listen(daemon):
    evil = {"Origin": "http://evil.example"}
    status, text = post_action(daemon, {"method": "record.start", "token": TOKEN}, headers=evil)
    assert status == 403 and "cross-origin request from http://evil.example refused" in text
    assert daemon.recorder is None
    host = daemon.dashboard.url.split("/")[2]
    status, reply = post_action(daemon, {"method": "record.stop", "token": TOKEN}, headers={"Origin": f"http://{host}"})
    assert status == 409 and reply["error"]["type"] == "NotRecording"  # its own page: the action ran


def test_a_taken_port_moves_the_dashboard_to_a_free_one(caplog):
    from qnode.host.dashboard import DashboardServer

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = DashboardServer("tcp://127.0.0.1:9", "tcp://127.0.0.1:9", port=port).start()
        try:
            assert server.port not in (0, port)
            with urllib.request.urlopen(server.url + "api/info", timeout=10) as reply:
                assert json.loads(reply.read())["token_configured"] is False
        finally:
            server.stop()
    assert f"dashboard port {port} is in use" in caplog.text


def test_qnode_dashboard_prints_the_url(daemon):
    out = subprocess.run([sys.executable, "-m", "qnode.host.cli", "dashboard", "--no-open",
                          "--control", daemon.control_url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == daemon.dashboard.url
    with urllib.request.urlopen(out.stdout.split()[0], timeout=10) as page:
        html = page.read().decode()
    assert "<canvas" in html and "http" not in html.replace('href="data:,"', "")  # bundles all it needs


def test_qnode_dashboard_says_when_the_daemon_has_none():
    cfg = load_config()
    cfg.dashboard.enabled = False
    with Daemon(cfg, control_url="tcp://127.0.0.1:0", stream_url="tcp://127.0.0.1:0") as d:
        out = subprocess.run([sys.executable, "-m", "qnode.host.cli", "dashboard", "--no-open",
                              "--control", d.control_url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "NotAvailable: the dashboard is disabled ([dashboard] enabled = false)" in out.stderr


# --- in the browser ------------------------------------------------------------------------------


def chromium_path() -> str | None:
    path = os.environ.get("QNODE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return path if path and os.access(path, os.X_OK) else None


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        path = None
    if path is None:
        pytest.skip("browser tests need headless Chromium and playwright: `apt-get install chromium` and "
                    "`pip install -e '.[dev]'` (set QNODE_CHROMIUM=/path/to/chromium for another build)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


class PageErrors(list):
    def check(self):
        assert not self, f"the page raised: {self}"


@pytest.fixture(scope="module")
def page(browser, daemon):
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.set_default_timeout(WAIT_MS)
    errors = PageErrors()
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    # Refused actions answer 403, which Chromium logs as a failed resource: not a page error.
    pg.on("console", lambda msg: errors.append(msg.text)
          if msg.type == "error" and not msg.text.startswith("Failed to load resource") else None)
    pg.errors = errors
    pg.goto(daemon.dashboard.url)
    yield pg
    pg.close()


def canvas_pixels(page, canvas_id: str) -> str:
    return page.evaluate(f"document.getElementById('{canvas_id}').toDataURL()")


def test_page_shows_the_lab_live(page, daemon):
    page.wait_for_function("qnode.connected && qnode.rateSamples >= 2")
    assert page.text_content("#node") == "sim-node-a"
    # Rates: the sync channel (0.9 M attempts/s), in the table and on a plot that keeps moving.
    page.wait_for_function("document.getElementById('rates-table').textContent.includes('sync')")
    value, unit = re.search(r"0 sync\s*([\d.]+) ([kM])/s", page.text_content("#rates-table")).groups()
    assert 0.85e6 <= float(value) * {"k": 1e3, "M": 1e6}[unit] <= 0.95e6  # 900 attempts a 1 ms cycle
    before, samples = canvas_pixels(page, "rates-plot"), page.evaluate("qnode.rateSamples")
    page.wait_for_function(f"qnode.rateSamples >= {samples + 3}")
    assert canvas_pixels(page, "rates-plot") != before
    # The pair source's histogram and coincidence rate, instruments, loops.
    page.wait_for_function("qnode.lastUpdate.g2 && qnode.lastUpdate.g2.pairs > 0 && qnode.lastUpdate.g2.coincidence_hz > 0")
    peak_ns = float(re.search(r"peak (-?[\d.]+) ns", page.text_content("#g2-caption")).group(1))
    assert 3.7 <= peak_ns <= 6.7  # spdc_b's cable is 4.7 ns longer than spdc_a's; the default bin is 1 ns
    page.wait_for_selector("[data-instrument=cryostat]")
    assert "temperature_a_k" in page.text_content("[data-instrument=cryostat]")
    assert "emission_on" in page.text_content("[data-instrument=laser]")
    assert page.is_visible("text=no loops running")
    page.errors.check()


def test_loop_status_appears_with_its_state_and_trace(page, daemon):
    # Stand in for the phase lock: its status on the loops.phase_lock topic, as the loop publishes it.
    for i in range(30):
        daemon.publisher.post("loops.phase_lock", {"state": "locked", "locked": True, "phase_error_deg": (-1) ** i * 3.0,
                                                   "phase_deg": 90.0, "actuator_v": 41.5, "cycles": i})
        time.sleep(0.03)  # spread over a second, like a loop's status, so the trace has a width
    page.wait_for_selector("#loop-phase_lock")
    assert not page.is_visible("text=no loops running")
    assert page.text_content("#loop-phase_lock .state") == "locked"
    page.wait_for_function("qnode.loops.phase_lock.trace.length >= 2")
    assert page.evaluate("qnode.loops.phase_lock.trace.every((p) => Math.abs(p.phase_error_deg) === 3)")
    assert "actuator_v 41.5" in page.text_content("#loop-phase_lock .caption")
    page.errors.check()


def test_histogram_bins_and_range_follow_the_page(page):
    page.fill("#g2-bin", "2000")
    page.fill("#g2-range", "10000")
    page.select_option("#g2-a", "1")
    page.select_option("#g2-b", "2")
    page.click("#g2-apply")
    page.wait_for_function("qnode.lastUpdate.g2.bin_ps === 2000 && qnode.lastUpdate.g2.range_ps === 10000")
    g2 = page.evaluate("qnode.lastUpdate.g2")
    assert len(g2["counts"]) == 10 and g2["delays_ps"][0] == -10_000
    page.fill("#g2-bin", "0")
    page.click("#g2-apply")
    page.wait_for_function("document.getElementById('action-status').textContent.includes('bin_ps')")
    assert page.evaluate("qnode.lastUpdate.g2.bin_ps") == 2000  # the bad choice was not taken
    page.errors.check()


def test_an_action_without_the_token_is_refused(page, daemon):
    page.fill("#user", "visitor")
    page.fill("#token", "")
    page.click("#rec-start")
    page.wait_for_function("document.getElementById('action-status').textContent.includes('refused')")
    assert "Forbidden" in page.text_content("#action-status")
    assert daemon.recorder is None and page.get_attribute("#rec-state", "data-recording") == "0"
    page.wait_for_function("document.getElementById('log').textContent.includes('action by visitor')")
    assert "-> refused" in page.text_content("#log")
    page.errors.check()


def test_recording_started_from_the_page_writes_a_file(page, daemon, tmp_path):
    path = tmp_path / "from-the-page.h5"
    page.fill("#user", "alice")
    page.fill("#token", TOKEN)
    page.fill("#rec-path", str(path))
    page.click("#rec-start")
    page.wait_for_selector("#rec-state[data-recording='1']")
    assert daemon.recorder is not None and path.exists()
    assert page.text_content("#rec-file") == str(path)
    page.wait_for_function("parseFloat(document.getElementById('rec-size').textContent) > 0 && "
                           "!document.getElementById('rec-size').textContent.endsWith(' B')")
    page.click("#rec-stop")
    page.wait_for_selector("#rec-state[data-recording='0']")
    with h5py.File(path, "r") as f:
        assert f["/photon_data/timestamps"].shape[0] > 0
    page.wait_for_function("document.getElementById('log').textContent.includes('action by alice at 127.0.0.1: record.stop')")
    assert f"action by alice at 127.0.0.1: record.start {{\"path\": \"{path}\"}} -> ok" in page.text_content("#log")
    page.errors.check()


def test_screenshot_after_ten_seconds(page):
    # 5 rates samples per second: 50 is ten seconds of the lab on the page.
    page.wait_for_function("qnode.rateSamples >= 50 && qnode.lastUpdate.uptime_s >= 10")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    with open(SCREENSHOT, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert page.evaluate("qnode.updatesHz") > 0
    page.errors.check()


def test_a_dropped_connection_comes_back_without_doubling_the_history(page):
    samples = page.evaluate("qnode.rates.length")
    page.evaluate("qnode.ws.close()")
    page.wait_for_function(f"qnode.connected && qnode.reconnects >= 1 && qnode.rates.length > {samples}")
    times = page.evaluate("qnode.rates.map((r) => r.t)")
    assert times == sorted(set(times))  # each rates sample once, in order
    page.errors.check()


def test_page_reconnects_when_the_daemon_restarts(browser):
    with socket.socket() as s:  # the restarted daemon must serve the page on the same port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = sim_config(port)
    first = start_daemon(cfg)
    pg = browser.new_page()
    pg.set_default_timeout(WAIT_MS)
    try:
        pg.goto(first.dashboard.url)
        pg.wait_for_function("qnode.connected && qnode.rateSamples >= 1")
        started = pg.evaluate("qnode.startedWall")
        first.close()
        pg.wait_for_selector("#conn:text('reconnecting')")
        assert pg.is_visible("#banner")
        second = start_daemon(cfg)
        try:
            assert second.dashboard.port == port
            pg.wait_for_function(f"qnode.connected && qnode.startedWall !== {started!r} && qnode.rateSamples >= 3")
            assert not pg.is_visible("#banner") and pg.text_content("#conn") == "live"
            assert pg.evaluate("qnode.rates.every((r) => r.t >= qnode.startedWall)")  # old history dropped
        finally:
            second.close()
    finally:
        pg.close()
