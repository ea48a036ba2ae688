"""A screenshot of the serving page with a sample classified (the README's picture).

    python tools/screenshot_ui.py exports/lenet_bn.onnx --out docs/serve-ui.png [--sample 0]

Starts python -m export.serve on a free port, opens the page in Debian's
chromium through Playwright (no browser download), clicks a sample and saves
the page.
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="ONNX files to serve")
    parser.add_argument("--out", default="serve-ui.png")
    parser.add_argument("--sample", type=int, default=0, help="which sample to click (0-9)")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("error: no chromium; apt-get install chromium")
    from playwright.sync_api import sync_playwright

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "export.serve", *args.models, "--port", str(port),
                               "--grpc-port", "0", "--log-level", "warning"], cwd=ROOT)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if urllib.request.urlopen(url + "/v2/health/ready").status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1200, "height": 620})
            page.goto(url + "/")
            page.wait_for_selector("body[data-ready=true]")
            page.locator("#samples button").nth(args.sample).click()
            page.wait_for_selector("#predictions li")
            page.wait_for_timeout(300)  # the preview's image decode
            page.screenshot(path=args.out)
            browser.close()
        print(f"wrote {args.out}")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
