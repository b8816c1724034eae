"""Benchmarks of the installed mlspecqd package (pip install . first): run each one as
`python3 bench/run.py NAME [ARGS...]` from any folder, where NAME is a module of this folder
(`python3 bench/run.py` lists them, `python3 bench/run.py NAME --help` shows a benchmark's options).
run.py loads this folder as the package `bench` without putting the repository on sys.path, so the
source tree's mlspecqd/, which has no built native module, is never imported in place of the installed
one. Each benchmark writes its JSON to bench/results/NAME.json unless its --out option names another
file, and records the machine it ran on (bench/machine.py).
"""

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
