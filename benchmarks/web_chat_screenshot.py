"""A screenshot of the web chat page of `quatrix serve` in headless Chromium (for docs/).

    python benchmarks/web_chat_screenshot.py --ckpt runs/berry-tiny/grpo/checkpoint \
        --message "What is 3 + 4?" --out docs/img/web-chat.png [--image scene.png]

Drives Debian's `chromium` with Playwright (no browser download). `chat_in_browser` is also
what tests/serve/test_web_chat.py uses.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

CHROMIUM = os.environ.get("QUATRIX_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# For a root, headless, offline machine: no sandbox, and none of Chromium's own network chatter.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def chat_in_browser(url: str, messages: list[str], *, screenshot: Path | None = None, image: Path | None = None,
                    system: str | None = None):
    """Open the page, set greedy decoding, send each message in turn (the image with the
    first); return (texts of the last reply seen while it streamed, the last reply)."""
    from playwright.sync_api import sync_playwright

    if CHROMIUM is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium, or set QUATRIX_CHROMIUM)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 640})
            page.goto(url)
            page.wait_for_function("document.getElementById('model').textContent.includes('context')")
            page.eval_on_selector("#temperature", "el => { el.value = 0; el.dispatchEvent(new Event('input')); }")
            if system:
                page.fill("#system", system)
            if image is not None:
                page.set_input_files("#file", str(image))
                page.wait_for_function("document.getElementById('preview').textContent.length > 0")
            for turn, message in enumerate(messages):
                page.fill("#input", message)
                page.click("#send")
                page.wait_for_function(f"document.querySelectorAll('.msg.assistant, .msg.error').length > {turn}")
                seen = []
                while page.is_disabled("#send"):  # streaming: the button comes back when the reply is done
                    seen.append(page.inner_text(".msg.assistant >> nth=-1"))
                    page.wait_for_timeout(20)
            errors = page.locator(".msg.error")
            if errors.count():
                raise RuntimeError(f"the page shows an error: {errors.first.inner_text()}")
            final = page.inner_text(".msg.assistant >> nth=-1")
            if screenshot is not None:
                page.screenshot(path=str(screenshot))
            return seen, final
        finally:
            browser.close()


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serve"))
    from serve_helpers import running_server

    from quatrix.serve.app import create_app, scheduler_for
    from quatrix.pretrained import load_model_and_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--message", action="append", required=True, help="a user turn (repeatable)")
    parser.add_argument("--image", type=Path)
    parser.add_argument("--system")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    model, tokenizer = load_model_and_tokenizer(args.ckpt)
    app = create_app(scheduler_for(model, tokenizer), model_name=Path(args.ckpt).resolve().parent.name)
    with running_server(app) as url:
        _, final = chat_in_browser(url, args.message, screenshot=args.out, image=args.image, system=args.system)
    print(f"reply: {final!r}\nscreenshot: {args.out}")


if __name__ == "__main__":
    main()
