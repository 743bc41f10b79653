"""A static HTML page for a folder of attention results: opens in any browser, no server, images beside it."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
 body {{ font-family: system-ui, sans-serif; margin: 1.5rem; background: #fafafa; color: #222; }}
 table {{ border-collapse: collapse; }} td, th {{ border-bottom: 1px solid #ddd; padding: .5rem; vertical-align: top; }}
 img {{ width: 240px; height: auto; display: block; }} .err {{ color: #b00020; }}
 .topk td {{ border: none; padding: .1rem .4rem; }} .bar {{ background: #4a7bd0; height: .6rem; }}
</style></head><body>
<h1>{title}</h1>
<p>{summary}</p>
<table><tr><th>input</th><th>attention</th>{extra_head}<th>prediction</th></tr>
{rows}
</table></body></html>
"""


def _topk_table(topk: list[dict[str, Any]]) -> str:
    cells = "".join(
        f"<tr><td>{html.escape(t['label'])}</td><td>{100 * t['prob']:.1f}%</td>"
        f"<td><div class='bar' style='width:{max(1, round(120 * t['prob']))}px'></div></td></tr>"
        for t in topk
    )
    return f"<table class='topk'>{cells}</table>"


def write_report(out_dir: str | Path, title: str = "vit-app attention report") -> Path:
    """Build out_dir/report.html from out_dir/index.jsonl (written by `vit-app attention`)."""
    out = Path(out_dir)
    records = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines() if line.strip()]
    has_extra = any("layers" in r or "heads" in r for r in records)  # --layers-grid / --heads-grid: a column more
    span = 4 if has_extra else 3
    rows = []
    for r in records:
        name = html.escape(r["path"])
        if "error" in r:
            err = html.escape(str(r["error"]))
            rows.append(f"<tr><td colspan='{span}'><b>{name}</b><div class='err'>{err}</div></td></tr>")
            continue
        src = {k: html.escape(r[k]) for k in ("input", "overlay", "layers", "heads") if k in r}
        links = [f"<a href='{src[k]}'><img src='{src[k]}' alt='{k}'></a>" for k in ("layers", "heads") if k in src]
        extra = "".join(links)
        method = html.escape(r["method"])
        rows.append(
            "<tr>"
            f"<td><img src='{src['input']}' alt='input'><small>{name}</small></td>"
            f"<td><img src='{src['overlay']}' alt='attention overlay'><small>{method}</small></td>"
            + (f"<td>{extra}</td>" if has_extra else "")
            + f"<td><b>{html.escape(r['label'])}</b> {100 * r['prob']:.1f}%{_topk_table(r.get('topk', []))}</td>"
            "</tr>"
        )
    ok = sum("error" not in r for r in records)
    summary = f"{ok} images explained, {len(records) - ok} could not be read."
    page = out / "report.html"
    extra_head = "<th>layers / heads</th>" if has_extra else ""
    page.write_text(PAGE.format(title=html.escape(title), summary=summary, rows="\n".join(rows), extra_head=extra_head))
    return page
