"""Open every page of the built site in headless Chromium and check it.

    python docs/check_site.py site/ [--screenshots DIR]

Serves the folder on 127.0.0.1, starts Chromium (the Debian packages chromium and
chromium-driver) through Selenium, and walks every page reachable from the home page:
each page must load (HTTP 200 and a document that finishes loading), each <img> must
load (complete, with a non-zero natural width), and each link inside the site must
reach a page or file that exists, and its #anchor an element on that page. Exits 1
and lists every problem found; 0 when there is none.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urldefrag, urlparse

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,900"]
SCREENSHOT_PAGES = ("tutorials/08_what_cls_looks_at/",)     # pages also saved as full-page PNGs


def _find(*names):
    for n in names:
        p = shutil.which(n)
        if p:
            return p
    return None


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)      # the browser dropping a request is no error


def _serve(folder: Path):
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = _Server(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _driver(profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _find("chromium", "chromium-browser"), _find("chromedriver")
    if not binary or not driver_path:
        raise SystemExit("check_site: needs Chromium and its driver "
                         "(Debian: apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_path), options=opts)


def _wait_loaded(driver, timeout=60.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if driver.execute_script("return document.readyState") == "complete" and driver.execute_script(
                "return Array.from(document.images).every(i => i.complete)"):
            return True
        time.sleep(0.1)
    return False


def _screenshot(driver, path: Path):
    height = driver.execute_script("return Math.max(document.body.scrollHeight, 900)")
    driver.set_window_size(1280, min(int(height), 16000))
    time.sleep(0.3)
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 900)


def check_site(folder, screenshots=None) -> int:
    folder = Path(folder).resolve()
    if not (folder / "index.html").is_file():
        print(f"check_site: {folder}: no index.html (build the site first: python docs/build.py)")
        return 1
    server, root = _serve(folder)
    profile = tempfile.mkdtemp(prefix="tinyvit-chromium-")     # a fresh profile every run
    problems, pages, files, anchors = [], 0, 0, []
    driver = _driver(profile)
    try:
        todo, seen, ids = [root], {root}, {}
        while todo:
            url = todo.pop(0)
            status = _status(url)
            if status != 200:
                problems.append(f"{url}: HTTP {status}")
                continue
            if not (url.endswith("/") or url.endswith(".html")):
                files += 1                                     # a file the site links to (a .ipynb, ...)
                continue
            driver.get(url)
            pages += 1
            if not _wait_loaded(driver):
                problems.append(f"{url}: did not finish loading")
            for src, ok, width in driver.execute_script(
                    "return Array.from(document.images).map(i => [i.currentSrc || i.src, i.complete, i.naturalWidth])"):
                if not ok or not width:
                    problems.append(f"{url}: image did not load: {src[:120]}")
            ids[url] = set(driver.execute_script(
                "return Array.from(document.querySelectorAll('[id], a[name]')).map(e => e.id || e.name)"))
            for href in driver.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"):
                target, frag = urldefrag(href)
                if not target.startswith(root):
                    continue                                   # outside the site: not checked
                if urlparse(target).path.endswith("/index.html"):
                    target = target[:-len("index.html")]
                if frag:
                    anchors.append((url, target, frag))
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
            rel = url[len(root):]
            if screenshots is not None and rel in SCREENSHOT_PAGES:
                Path(screenshots).mkdir(parents=True, exist_ok=True)
                shot = Path(screenshots) / (rel.strip("/").replace("/", "_") + ".png")
                _screenshot(driver, shot)
                print(f"screenshot: {shot}")
        for page, target, frag in anchors:
            if target in ids and frag not in ids[target]:
                problems.append(f"{page}: link to {target}#{frag}: no element with that id")
    finally:
        driver.quit()
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)
    print(f"check_site: {pages} pages and {files} other files opened in headless Chromium, "
          f"{len(anchors)} anchored links; {len(problems)} problem(s)")
    for p in problems:
        print("  " + p)
    return 1 if problems or pages == 0 else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("site", help="the built site folder (docs/build.py writes site/)")
    ap.add_argument("--screenshots", default=None, metavar="DIR",
                    help=f"also save full-page screenshots of {', '.join(SCREENSHOT_PAGES)}")
    args = ap.parse_args(argv)
    return check_site(args.site, args.screenshots)


if __name__ == "__main__":
    raise SystemExit(main())
