"""Serve the dashboard inside an isolated network namespace and visit it from
another address; prints what each visit showed, as one JSON object.

Run by ``test_loopback.py`` as ``unshare --net --map-root-user python
netns_probe.py SPEC``: the namespace has only its own loopback interface, on
which this script puts 10.200.0.1, an address of no real network. A server that
listens on 0.0.0.0 there is reachable from nowhere outside, and a browser that
opens http://10.200.0.1:PORT/ is, to the server, a client from another machine.

SPEC is JSON: {"command": [...], "cwd": str, "env": {...}, "port": int,
"log": str, "urls": [str, ...]}. The output: {"listening": [addresses],
"visits": {url: {"titles": [...], "errors": [...], "nav_links": n,
"auto_nav": n}}}: the sidebar's page links, and Streamlit's own list of pages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

from appdriver import (
    AUTO_NAV,
    CHROMIUM,
    CHROMIUM_ARGS,
    IDLE,
    NAV_LINK,
    PAGE_MS,
    START_SECONDS,
)
from playwright.sync_api import sync_playwright

OTHER_MACHINE = "10.200.0.1"  # exists only inside the namespace
LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp
ERROR = "[data-testid=stAlertContentError]"


def listening(port: int) -> list[str]:
    """The local addresses listening on TCP ``port`` in this namespace."""
    import ipaddress

    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                address, hex_port = fields[1].split(":")
                if fields[3] == LISTEN and int(hex_port, 16) == port:
                    raw = bytes.fromhex(address)
                    host = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                    found.add(str(ipaddress.ip_address(host)))
    return sorted(found)


def visit(browser, url: str) -> dict:
    """Open ``url`` in a fresh session; what the page shows once it is idle."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(PAGE_MS)
        page.goto(url)
        page.wait_for_selector("[data-testid=stMain] h1", timeout=PAGE_MS)
        page.wait_for_selector(IDLE, timeout=PAGE_MS)
        return {
            "titles": page.locator("[data-testid=stMain] h1").all_inner_texts(),
            "errors": page.locator(ERROR).all_inner_texts(),
            "nav_links": page.locator(NAV_LINK).count(),
            "auto_nav": page.locator(AUTO_NAV).count(),
        }
    finally:
        context.close()


def main(spec: dict) -> dict:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(
        ["ip", "addr", "add", f"{OTHER_MACHINE}/32", "dev", "lo"], check=True
    )
    port = spec["port"]
    with open(spec["log"], "ab") as log:
        server = subprocess.Popen(
            spec["command"],
            cwd=spec["cwd"],
            env=spec["env"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # in this process group, which the test kills whatever happens
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start; see {spec['log']}")
            try:
                url = f"http://127.0.0.1:{port}/_stcore/health"
                with urllib.request.urlopen(url, timeout=2):
                    break
            except OSError:
                time.sleep(0.2)  # polling the server, not waiting on a result
        result = {"listening": listening(port), "visits": {}}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                for url in spec["urls"]:
                    result["visits"][url] = visit(browser, url)
            finally:
                browser.close()
        return result
    finally:
        server.terminate()  # the launcher passes SIGTERM on to its server
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
