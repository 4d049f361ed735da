"""Regenerate docs/view.png: `memento view` on the paper's AIME 2025 P5 trace, in headless Chromium at 1200x800,
the KV marker moved into block 4 (blocks 1-3 evicted, greyed), saved as a 256-colour PNG (< 150 KB).

    .venv/bin/python scripts/view_screenshot.py [--out docs/view.png]
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

from PIL import Image

from memento.view import items, page
from memento.view.browser import chromium

ROOT = Path(__file__).resolve().parents[1]
AIME = ROOT.parent / "shared" / "data" / "memento-examples" / "memento_trace_aime25_p5.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "view.png")
    parser.add_argument("--trace", type=Path, default=AIME)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, chromium() as browser:
        html = page.write(items.read(args.trace), Path(tmp) / "view.html", "the paper's AIME 2025 P5 trace")
        tab = browser.new_page(viewport={"width": 1200, "height": 800})
        tab.goto(html.as_uri())
        tab.wait_for_selector(".pair")
        body = items.read(args.trace)[0].body
        into_block_4 = body["pt"] + sum(b["bt"] + b["mt"] for b in body["blocks"][:3]) + body["blocks"][3]["bt"] // 2
        tab.fill("#kv-marker", str(into_block_4))  # a range input: fill sets its value and fires `input`
        tab.locator("#kv-marker").blur()
        png = tab.screenshot()
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
