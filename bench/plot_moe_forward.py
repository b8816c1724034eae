"""Line chart (SVG) of MoE target efficiency: a T-row forward's time over T one-row forwards, by T.

    python3 bench/run.py plot_moe_forward [JSON] [--out SVG]

JSON defaults to bench/results/moe_forward.json (written by `python3 bench/run.py moe_forward`), SVG to
bench/results/moe_forward.svg: one line per target and sequence count (colour: target; dash: 1, 2 or 4
sequences), as MoESD plots target efficiency (the inverse). Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import RESULTS
from bench.plot_speculative import text, write_atomic

COLOURS = {"random": "#c44e52", "moefied": "#4c72b0", "dense": "#55a868"}
OTHER_COLOUR = "#8c8c8c"
DASHES = {1: "", 2: ' stroke-dasharray="8,4"', 4: ' stroke-dasharray="2,3"'}
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 760, 480, 70, 190, 60, 50  # px


def render(data: dict) -> str:
    series = {(name, row["sequences"]): [] for name, entry in data["targets"].items() for row in entry["forward"]}
    for name, entry in data["targets"].items():
        for row in entry["forward"]:
            series[name, row["sequences"]].append((row["rows"], row["ratio_to_T_one_rows"]))
    max_rows = max(rows for points in series.values() for rows, _ in points)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(rows: float) -> float:
        return LEFT + (rows - 1) / max(max_rows - 1, 1) * plot_w

    def y(ratio: float) -> float:
        return TOP + (1.0 - min(ratio, 1.2) / 1.2) * plot_h

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
           text(WIDTH / 2, 24, "Time of a T-row forward over T one-row forwards (lower: verification pays more)",
                "middle", ' font-size="14" font-weight="bold"'),
           text(WIDTH / 2, 42, f"{data['machine'].get('cpu', '')}, load {data.get('load_average_start', ['?'])[0]}",
                "middle", ' fill="#444"')]
    for tick in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2):
        out.append(f'<line x1="{LEFT}" y1="{y(tick):.1f}" x2="{LEFT + plot_w}" y2="{y(tick):.1f}" stroke="#ddd"/>')
        out.append(text(LEFT - 6, y(tick) + 4, f"{tick:.1f}", "end"))
    for rows in range(1, max_rows + 1, 3):
        out.append(text(x(rows), TOP + plot_h + 16, str(rows), "middle"))
    out.append(text(LEFT + plot_w / 2, HEIGHT - 12, "rows T per sequence", "middle"))
    for index, ((name, sequences), points) in enumerate(series.items()):
        colour = COLOURS.get(name, OTHER_COLOUR)
        path = " ".join(f"{x(rows):.1f},{y(ratio):.1f}" for rows, ratio in sorted(points))
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"'
                   f'{DASHES.get(sequences, "")}/>')
        legend_y = TOP + 10 + index * 18
        out.append(f'<line x1="{WIDTH - RIGHT + 14}" y1="{legend_y}" x2="{WIDTH - RIGHT + 44}" y2="{legend_y}" '
                   f'stroke="{colour}" stroke-width="2"{DASHES.get(sequences, "")}/>')
        out.append(text(WIDTH - RIGHT + 50, legend_y + 4, f"{name}, {sequences} seq."))
    out.append("</svg>\n")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="?", type=Path, default=RESULTS / "moe_forward.json")
    parser.add_argument("--out", type=Path, default=RESULTS / "moe_forward.svg")
    args = parser.parse_args()
    try:
        svg = render(json.loads(args.json.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"plot_moe_forward: cannot plot {args.json}: {e!r} (needs moe_forward's targets)", file=sys.stderr)
        return 2
    write_atomic(args.out, svg)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
