"""A self-contained HTML page: inline CSS, figures embedded as PNG data URIs, no script, no
external resource, so the page opens offline and from any folder. The same PNGs (and CSV
tables) are also written beside it as files.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

import pandas as pd

__all__ = ["Page"]

_CSS = """
body { font-family: "DejaVu Sans", Arial, Helvetica, sans-serif; margin: 0 auto; max-width: 1280px;
       padding: 1em 2em 3em; color: #222; background: #fff; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
p.sub { color: #555; margin-top: 0; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; max-width: 60em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.8em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td.l, th.l { text-align: left; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; font-size: 0.95em; }
dl.facts dt { font-weight: bold; } dl.facts dd { margin: 0; }
.thumbs { display: flex; flex-wrap: wrap; gap: 1em; }
.thumbs figure { width: 560px; margin: 0; }
"""


@dataclass
class Page:
    """An HTML page under construction, and the files that go beside it."""

    title: str
    subtitle: str = ""
    parts: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)

    def section(self, title: str, text: str = "") -> None:
        self.parts.append(f"<h2>{html.escape(title)}</h2>")
        if text:
            self.text(text)

    def text(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def facts(self, items: dict[str, object]) -> None:
        rows = "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items.items())
        self.parts.append(f'<dl class="facts">{rows}</dl>')

    def figure(self, name: str, png: bytes, caption: str, alt: str | None = None) -> str:
        """Embed ``png`` with a caption; the file ``name`` is also written beside the page."""
        self.files[name] = png
        self.parts.append(self._figure_html(name, png, caption, alt))
        return name

    def thumbnails(self, items: list[tuple[str, bytes, str]]) -> None:
        """Several small figures side by side: (name, png, caption) each."""
        inner = []
        for name, png, caption in items:
            self.files[name] = png
            inner.append(self._figure_html(name, png, caption, None))
        self.parts.append('<div class="thumbs">' + "".join(inner) + "</div>")

    @staticmethod
    def _figure_html(name: str, png: bytes, caption: str, alt: str | None) -> str:
        data = base64.b64encode(png).decode("ascii")
        alt_text = html.escape(alt or caption.split(".")[0] or name)
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{alt_text}" data-file="{html.escape(name)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def table(self, df: pd.DataFrame, caption: str = "", csv_name: str | None = None,
              floatfmt: str = "{:.3f}") -> None:
        """An HTML table of ``df`` (text columns left-aligned), optionally also written as CSV."""
        if csv_name:
            self.files[csv_name] = df.to_csv(index=False).encode("utf-8")
        text_cols = {c for c in df.columns if df[c].dtype == object}
        head = "".join(f'<th class="{"l" if c in text_cols else ""}">{html.escape(str(c))}</th>' for c in df.columns)
        body = []
        for _, row in df.iterrows():
            cells = []
            for c in df.columns:
                v = row[c]
                if isinstance(v, float):
                    s = "" if pd.isna(v) else floatfmt.format(v)
                else:
                    s = "" if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v)
                cells.append(f'<td class="{"l" if c in text_cols else ""}">{html.escape(s)}</td>')
            body.append("<tr>" + "".join(cells) + "</tr>")
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        link = f' <a href="{html.escape(csv_name)}">(CSV)</a>' if csv_name else ""
        self.parts.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
                          + (f"<p class=\"sub\">{link}</p>" if link else ""))

    def render(self) -> str:
        sub = f'<p class="sub">{html.escape(self.subtitle)}</p>' if self.subtitle else ""
        return (
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(self.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(self.title)}</h1>{sub}\n" + "\n".join(self.parts) + "\n</body>\n</html>\n"
        )
