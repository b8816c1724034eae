"""SVG plot of the mixed-precision experts sweep (bench/moe_precision.py): decode speed over the all-MXFP4
model's (measured in turns, so the ratio survives a loaded machine) and perplexity against weight memory,
one marker per point (hot-first filled, the random-choice control hollow).

    python3 bench/run.py plot_moe_precision [JSON] [--out SVG]

JSON defaults to bench/results/moe_precision.json, SVG to the JSON's name with .svg. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from bench import RESULTS

PANEL_W, PANEL_H, MARGIN, TOP = 420, 300, 60, 70
COLOUR = "#4c72b0"


def _text(x: float, y: float, s: str, anchor: str = "middle", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{escape(s)}</text>'


def _panel(rows: list[dict[str, Any]], left: float, key: str, title: str) -> list[str]:
    """One scatter panel: weight GiB across, rows[key] up; the axes span the data with 5% padding."""
    points = [(row["weight_bytes"] / 2**30, row[key], row) for row in rows if key in row]
    if not points:
        return [_text(left + PANEL_W / 2, TOP + PANEL_H / 2, f"{title}: not measured")]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_low, x_high = min(xs), max(xs)
    y_low, y_high = min(ys), max(ys)
    x_pad, y_pad = (x_high - x_low or 1) * 0.05, (y_high - y_low or 1) * 0.05
    x_low, x_high, y_low, y_high = x_low - x_pad, x_high + x_pad, y_low - y_pad, y_high + y_pad

    def at(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_low) / (x_high - x_low) * PANEL_W,
                TOP + PANEL_H - (y - y_low) / (y_high - y_low) * PANEL_H)

    out = [f'<rect x="{left}" y="{TOP}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#888"/>',
           _text(left + PANEL_W / 2, TOP - 10, title, extra=' font-weight="bold"'),
           _text(left + PANEL_W / 2, TOP + PANEL_H + 40, "weight memory (GiB)")]
    for value, anchor_y in ((y_low, TOP + PANEL_H), (y_high, TOP)):
        out.append(_text(left - 6, anchor_y + 4, f"{value:.3g}", "end"))
    for value, anchor_x in ((x_low, left), (x_high, left + PANEL_W)):
        out.append(_text(anchor_x, TOP + PANEL_H + 18, f"{value:.2f}"))
    hot = sorted((p for p in points if p[2]["choice"] == "hot-first"), key=lambda p: p[0])
    out.append('<polyline fill="none" stroke="#bbb" points="' +
               " ".join(f"{at(x, y)[0]:.1f},{at(x, y)[1]:.1f}" for x, y, _ in hot) + '"/>')
    for x, y, row in points:
        px, py = at(x, y)
        fill = COLOUR if row["choice"] == "hot-first" else "white"
        out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="5" fill="{fill}" stroke="{COLOUR}" stroke-width="2"/>')
        label = f"{row['fraction']:.3g}" + (" random" if row["choice"] != "hot-first" else "")
        out.append(_text(px + 8, py - 6, label, "start", ' font-size="11"'))
    return out


def render(report: dict[str, Any]) -> str:
    rows = report["results"]
    width, height = 2 * PANEL_W + 3 * MARGIN, TOP + PANEL_H + 60
    subtitle = (f"{Path(report['model']).name}; labels: fraction of experts in BF16; "
                f"{report['machine']['threads']} threads, load {report['machine']['load_average'][0]:.1f}")
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           _text(width / 2, 22, "MoE experts in mixed precision (hot BF16, rest MXFP4)", extra=' font-size="16"'),
           _text(width / 2, 42, subtitle, extra=' fill="#444" font-size="12"')]
    out += _panel(rows, MARGIN, "decode_vs_all_mxfp4", "decode speed / all-MXFP4 (paired tokens)")
    out += _panel(rows, 2 * MARGIN + PANEL_W, "perplexity", "perplexity (held-out wiki)")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_svg(report: dict[str, Any], path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(render(report))
    partial.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="?", type=Path, default=RESULTS / "moe_precision.json")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    write_svg(json.loads(args.json.read_text()), args.out or args.json.with_suffix(".svg"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
