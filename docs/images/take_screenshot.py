"""Retake ``docs/images/tensorboard.png``: TensorBoard's IMAGES tab after the digits config.

    lit-explain fit --config configs/digits.yaml          # writes runs/digits/version_N
    tensorboard --logdir runs --port 6006 --host 127.0.0.1 &
    python docs/images/take_screenshot.py                  # needs chromium and aiohttp

Headless Chromium loads the tab with a tag filter (``explain/all`` and one drift plot),
ticks "Show actual image size" through the DevTools protocol (the option is not kept in
the URL), waits for the images, and saves the screenshot.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import subprocess
import tempfile
import time
import urllib.request

DEFAULT_URL = ("http://localhost:6006/?darkMode=false#images"
               "&tagFilter=explain%2F(all%7Clrp.epsilon%2Fdrift)%24")
PORT = 9229
TICK_ACTUAL_SIZE = """
(() => { const stack = [document];
  while (stack.length) { const n = stack.pop();
    if (n.tagName === 'PAPER-CHECKBOX' && (n.textContent || '').includes('actual image size')) {
      if (!n.checked) n.click(); return 'ticked'; }
    if (n.shadowRoot) stack.push(n.shadowRoot);
    for (const c of (n.children || [])) stack.push(c); }
  return 'checkbox not found'; })()
"""


async def screenshot(url: str, out: str, width: int, height: int, wait: float) -> None:
    import aiohttp

    browser = subprocess.Popen(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tempfile.mkdtemp()}", "--hide-scrollbars",
         f"--window-size={width},{height}", "--remote-debugging-address=127.0.0.1",
         f"--remote-debugging-port={PORT}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{PORT}/json"))
                break
            except OSError:
                time.sleep(0.2)
        page = next(t for t in targets if t["type"] == "page")
        async with aiohttp.ClientSession() as session, session.ws_connect(
                page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            ids = iter(range(1, 1_000_000))

            async def call(method: str, **params: object) -> dict:
                call_id = next(ids)
                await ws.send_json({"id": call_id, "method": method, "params": params})
                async for message in ws:
                    data = json.loads(message.data)
                    if data.get("id") == call_id:
                        return data.get("result", data)
                raise ConnectionError("the browser closed the connection")

            await call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                       deviceScaleFactor=1, mobile=False)
            await call("Page.navigate", url=url)
            await asyncio.sleep(wait)
            result = await call("Runtime.evaluate", expression=TICK_ACTUAL_SIZE)
            print(result["result"]["value"])
            await asyncio.sleep(wait / 2)
            shot = await call("Page.captureScreenshot", format="png")
            with open(out, "wb") as file:
                file.write(base64.b64decode(shot["data"]))
    finally:
        browser.terminate()
        browser.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--out", default="docs/images/tensorboard.png")
    parser.add_argument("--size", type=int, nargs=2, default=(1400, 1000))
    parser.add_argument("--wait", type=float, default=8.0, help="seconds for the page to load")
    args = parser.parse_args()
    asyncio.run(screenshot(args.url, args.out, *args.size, args.wait))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
