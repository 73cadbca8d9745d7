"""`kproxy dashboard` in a sandbox lab, loaded by a real headless browser (Debian's chromium,
scripts/setup --test): the page's JavaScript polls the counters, and after 50 real requests
through the Service the counter the browser shows has grown by 50. The dashboard listens on the
host's loopback only and is stopped by pid (SIGINT, as Ctrl-C) at the end, exiting 0.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import answers, hits, running_dashboard
from .test_single_host import CLIENT

APPS = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---""" + CLIENT  # test_single_host's client pod

pytestmark = pytest.mark.skipif(not shutil.which("chromium"), reason="chromium is not installed "
                                "(scripts/setup --test)")


@pytest.fixture(scope="module")
def apps(lab):
    lab.apply(APPS)
    pods = lab.wait_for(lambda: len(lab.ready_pods("web")) == 3 and lab.ready_pods("web"))
    lab.wait_for(lambda: len(re.findall(r"default/web:http -> ", lab.node_save())) == 3, timeout=10)
    return pods


@pytest.fixture(scope="module")
def dashboard(lab, apps):
    with running_dashboard(lab) as (url, proc):
        yield url, proc


def chromium(tmp_path, url: str, *args: str) -> str:
    res = subprocess.run(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000", *args, url],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def shown_connections(tmp_path, url: str) -> int:
    """The svc default/web counter in the DOM the browser built (after the page's JS ran)."""
    dom = chromium(tmp_path, url, "--dump-dom")
    m = re.search(r'<span[^>]*data-service="default/web"[^>]*data-connections="(\d+)"', dom)
    assert m, dom[:3000]
    return int(m.group(1))


def screenshot(tmp_path, url: str, name: str) -> bytes:
    """A PNG of the page as the browser drew it; kept at $KPROXY_SCREENSHOT-<name>.png to look at."""
    shot = tmp_path / f"{name}.png"
    chromium(tmp_path, url, f"--screenshot={shot}", "--window-size=1400,1000")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, len(data)
    if os.environ.get("KPROXY_SCREENSHOT"):
        shutil.copy(shot, f"{os.environ['KPROXY_SCREENSHOT']}-{name}.png")
    return data


def test_the_browser_sees_the_counter_grow_after_50_requests(lab, dashboard, tmp_path):
    url, proc = dashboard
    before = shown_connections(tmp_path, url)
    first = screenshot(tmp_path, url, "before")
    answers = hits(lab, "client", f"http://{lab.get('svc', 'web')['spec']['clusterIP']}/", 50)
    assert len(answers) == 50 and not [a for a in answers if a.startswith("ERR")], answers
    after = shown_connections(tmp_path, url)
    assert 50 <= after - before <= 52, (before, after)  # ±a probe of the lab's own
    assert screenshot(tmp_path, url, "after") != first

    dom = chromium(tmp_path, url, "--dump-dom")
    assert "<svg" in dom and "svc default/web" in dom  # the Graphviz picture, inlined by the page
    on_arrows = [int(n) for n in re.findall(r'class="kp-count"[^>]*>(\d+)<', dom)]
    assert sum(on_arrows) >= after, (on_arrows, after)  # the counts written on the picture's arrows


class Browser:
    """Headless chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
    commands on its fd 3, answers on its fd 4, NUL-separated JSON), for what --dump-dom cannot do:
    watch one page update itself, and submit its form."""

    def __init__(self, profile):
        cmd_r, cmd_w = os.pipe()
        out_r, out_w = os.pipe()

        def fds():  # in the child: the pipe ends on 3 and 4, wherever os.pipe put them
            a, b = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10), fcntl.fcntl(out_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                      "--remote-debugging-pipe", f"--user-data-dir={profile}"],
                                     pass_fds=(3, 4), preexec_fn=fds, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(out_w)
        self.w, self.r = os.fdopen(cmd_w, "wb"), os.fdopen(out_r, "rb")
        self.next_id, self.session, self.buf = 0, None, b""

    def send(self, method: str, **params):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if self.session:
            msg["sessionId"] = self.session
        self.w.write(json.dumps(msg).encode() + b"\0")
        self.w.flush()
        while True:
            reply = self._message()
            if reply.get("id") == self.next_id:
                assert "error" not in reply, reply
                return reply["result"]

    def _message(self) -> dict:
        while b"\0" not in self.buf:
            chunk = self.r.read1(65536)
            assert chunk, "chromium closed its DevTools pipe"
            self.buf += chunk
        part, _, self.buf = self.buf.partition(b"\0")
        return json.loads(part)

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", url=url)["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Emulation.setDeviceMetricsOverride", width=1400, height=1100, deviceScaleFactor=1, mobile=False)
        deadline = time.monotonic() + 20
        while True:
            try:  # before the page commits there is no context to evaluate in
                if self.js("document.readyState === 'complete' && !!document.querySelector('[data-service]')"):
                    return
            except AssertionError:
                pass
            assert time.monotonic() < deadline, "the page did not show its counters"
            time.sleep(0.2)

    def js(self, expression: str):
        res = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        return res["result"].get("value")

    def close(self) -> None:
        self.w.close()
        self.r.close()
        self.proc.kill()
        self.proc.wait()


SHOWN = "+document.querySelector('[data-service=\"default/web\"]').dataset.connections"
TRACE = """(async () => {
  const form = document.getElementById("trace-form"), out = document.getElementById("trace-output");
  form.elements.src.value = "client";
  form.elements.dst.value = "svc/web";
  form.requestSubmit();
  for (let i = 0; i < 900 && !/^(\\$ |error)/.test(out.textContent); i++) await new Promise(r => setTimeout(r, 100));
  return out.textContent;
})()"""


def test_one_open_page_updates_itself_and_its_form_runs_a_trace(lab, dashboard, tmp_path):
    """No reload: the page's own polling shows the requests as they are counted, then its form
    runs `kproxy trace` server-side and shows the walk."""
    url, _ = dashboard
    browser = Browser(tmp_path / "cdp-profile")
    try:
        browser.open(url)
        before = browser.js(SHOWN)
        hits(lab, "client", f"http://{lab.get('svc', 'web')['spec']['clusterIP']}/", 20)
        deadline = time.monotonic() + 10
        while browser.js(SHOWN) < before + 20:
            assert time.monotonic() < deadline, (before, browser.js(SHOWN))
            time.sleep(0.3)
        assert browser.js(SHOWN) <= before + 21
        text = browser.js(TRACE)
        assert text.startswith("$ kproxy trace --proto tcp -n default -- client svc/web"), text
        assert "KUBE-SERVICES" in text and "KUBE-SVC-" in text and "KUBE-SEP-" in text, text
        png = base64.b64decode(browser.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
                               ["data"])
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
        if os.environ.get("KPROXY_SCREENSHOT"):
            Path(f"{os.environ['KPROXY_SCREENSHOT']}-trace.png").write_bytes(png)
    finally:
        browser.close()


def test_it_listens_on_loopback_only_and_ctrl_c_exits_0(dashboard):
    url, proc = dashboard
    port = int(url.rsplit(":", 1)[1].strip("/"))
    listening = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
    assert [line.split()[3] for line in listening.splitlines()] == [f"127.0.0.1:{port}"], listening
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0, proc.communicate()
    time.sleep(0.2)
    assert not answers(url + "api/counters")
