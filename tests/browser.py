"""Open an HTML file in headless Debian Chromium (driven by Playwright) and report what a reader sees.

Playwright never downloads a browser here: it launches ``/usr/bin/chromium`` (installed by
``.ci/run`` when missing).
"""

from __future__ import annotations

from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

# every <img>: its natural size and the variance of its pixels' luminance, drawn on a canvas
_IMAGES_JS = """
async () => {
  const out = [];
  for (const img of Array.from(document.images)) {
    if (!img.complete) { await new Promise(r => { img.onload = r; img.onerror = r; }); }
    const rec = {file: img.dataset.file || img.src.slice(0, 40), w: img.naturalWidth, h: img.naturalHeight,
                 variance: null, distinct: 0};
    if (img.naturalWidth > 0) {
      const c = document.createElement('canvas');
      c.width = img.naturalWidth; c.height = img.naturalHeight;
      const ctx = c.getContext('2d');
      ctx.drawImage(img, 0, 0);
      const d = ctx.getImageData(0, 0, c.width, c.height).data;
      let n = 0, s = 0, s2 = 0; const seen = new Set();
      for (let i = 0; i < d.length; i += 4) {
        const y = 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2];
        n++; s += y; s2 += y * y;
        if (seen.size < 64) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
      }
      rec.variance = s2 / n - (s / n) * (s / n);
      rec.distinct = seen.size;
    }
    out.push(rec);
  }
  return out;
}
"""


def inspect_page(html: str | Path, user_data_dir: str | Path) -> dict:
    """Load ``html`` (a local file) and return its console errors, page errors, requests and images.

    Returns
    -------
    dict
        ``errors``: console messages of type error and uncaught page errors; ``requests``: every URL
        the page asked for (the page itself included); ``images``: per ``<img>`` its ``w``, ``h``
        (natural size), ``variance`` (of the pixel luminance) and ``distinct`` colours (up to 64);
        ``title``.
    """
    from playwright.sync_api import sync_playwright

    url = Path(html).resolve().as_uri()
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(user_data_dir), executable_path=CHROMIUM, args=ARGS,
                                                   headless=True, viewport={"width": 1300, "height": 900})
        try:
            page = ctx.new_page()
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url, wait_until="load")
            images = page.evaluate(_IMAGES_JS)
            title = page.title()
        finally:
            ctx.close()
    return {"errors": errors, "requests": requests, "images": images, "title": title}
