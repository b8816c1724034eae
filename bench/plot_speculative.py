"""Bar chart (SVG) of the speculative-decoding benchmark: speedup over plain BF16, one bar per configuration.

    python3 bench/run.py plot_speculative [JSON] [--out SVG]

JSON defaults to bench/results/speculative.json (written by `python3 bench/run.py speculative`), SVG to
bench/results/speculative.svg. Standard library only; the SVG is written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from xml.sax.saxutils import escape

from bench import RESULTS

PAPER_SPEEDUP = 2.72  # ML-SpecQD paper, 3-level hierarchy
COLOURS = {"mlspecqd": "#4c72b0", "llama.cpp": "#dd8452"}
OTHER_COLOUR = "#8c8c8c"
WIDTH, LEFT, RIGHT = 900, 250, 150  # px; LEFT holds the labels, RIGHT the value after the longest bar
TOP, ROW, BAR = 116, 30, 20


def label(configuration: str) -> str:
    """Chart label of a configuration: the 0.5B draft is called "small" in the JSON."""
    return re.sub(r"\bmxfp4\b", "MXFP4", re.sub(r"\bsmall\b", "0.5B", configuration))


def text(x: float, y: float, s: str, anchor: str = "start", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{escape(s)}</text>'


def render(data: dict) -> str:
    rows = data["results"]
    vmax = max([PAPER_SPEEDUP] + [float(r["speedup"]) for r in rows]) * 1.02
    plot_w = WIDTH - LEFT - RIGHT
    height = TOP + len(rows) * ROW + 20

    def x(v: float) -> float:
        return LEFT + v / vmax * plot_w

    subtitle = (f"{data.get('prompts', '?')} HumanEval prompts, {data.get('max_new_tokens', '?')} new tokens, "
                f"greedy, {data.get('threads', '?')} threads, policy {data.get('policy', '?')}, "
                f"draft max {data.get('draft_max', '?')}")
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="13">',
           f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
           text(WIDTH / 2, 26, "Speculative decoding, Qwen2.5-Coder-1.5B BF16 target", "middle",
                ' font-size="16" font-weight="bold"'),
           text(WIDTH / 2, 48, subtitle, "middle", ' fill="#444"')]
    # Legend: one swatch per engine, in order of appearance.
    lx = LEFT
    for engine in dict.fromkeys(str(r.get("engine")) for r in rows):
        out.append(f'<rect x="{lx}" y="62" width="14" height="14" fill="{COLOURS.get(engine, OTHER_COLOUR)}"/>')
        out.append(text(lx + 20, 74, engine))
        lx += 40 + 8 * len(engine)
    # Bars, in the JSON's order; their values go last, over the reference lines, with a white halo.
    values: list[str] = []
    for i, r in enumerate(rows):
        y = TOP + i * ROW
        speedup, tps = float(r["speedup"]), float(r["tokens_per_second"])
        colour = COLOURS.get(str(r.get("engine")), OTHER_COLOUR)
        out.append(text(LEFT - 8, y + BAR / 2 + 4.5, label(str(r["configuration"])), "end"))
        bar_w = max(0.0, x(speedup) - LEFT)
        out.append(f'<rect x="{LEFT}" y="{y}" width="{bar_w:.1f}" height="{BAR}" fill="{colour}"/>')
        values.append(text(x(speedup) + 6, y + BAR / 2 + 4.5, f"{speedup:.2f}x ({tps:.1f} tok/s)",
                           extra=' stroke="white" stroke-width="4" paint-order="stroke"'))
    # Reference lines, drawn over the bars.
    y0, y1 = TOP - 8, TOP + len(rows) * ROW - ROW + BAR + 4
    out.append(f'<line x1="{LEFT}" y1="{y0}" x2="{LEFT}" y2="{y1}" stroke="#333"/>')
    for v, name in ((1.0, "1.0x"), (PAPER_SPEEDUP, f"ML-SpecQD paper 3-level ({PAPER_SPEEDUP:.2f}x)")):
        out.append(f'<line x1="{x(v):.1f}" y1="{y0}" x2="{x(v):.1f}" y2="{y1}" stroke="#333" '
                   'stroke-dasharray="5,4"/>')
        out.append(text(x(v), y0 - 6, name, "middle", ' fill="#333"'))
    out += values
    out.append("</svg>\n")
    return "\n".join(out)


def write_atomic(path: Path, content: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="?", type=Path, default=RESULTS / "speculative.json")
    parser.add_argument("--out", type=Path, default=RESULTS / "speculative.svg")
    args = parser.parse_args()
    try:
        data = json.loads(args.json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        print(f"plot_speculative: cannot read {args.json}: {e}", file=sys.stderr)
        return 2
    if not isinstance(data, dict) or not isinstance(data.get("results"), list) or not data["results"]:
        print(f'plot_speculative: {args.json} has no non-empty "results" list', file=sys.stderr)
        return 2
    try:
        svg = render(data)
    except (KeyError, TypeError, ValueError) as e:
        print(f"plot_speculative: bad row in {args.json}: {e!r} (each row needs configuration, "
              "speedup and tokens_per_second)", file=sys.stderr)
        return 2
    write_atomic(args.out, svg)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
