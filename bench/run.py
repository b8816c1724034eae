"""Runs one benchmark of this folder on the installed mlspecqd package.

    python3 bench/run.py NAME [ARGS...]     # from any folder; NAME --help shows the benchmark's options
    python3 bench/run.py                    # lists the benchmarks

This folder is loaded as the package `bench` from its file location and `bench.NAME` runs as __main__, so
the benchmarks import each other as `from bench import ...` without the repository on sys.path: Python
imports the installed mlspecqd, never the source tree's copy, which has no built native module.
"""

from __future__ import annotations

import ast
import importlib.util
import runpy
import sys
from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def benchmarks() -> dict[str, str]:
    """Name and first docstring line of each module here that runs as a program (has a __main__ guard)."""
    found = {}
    for path in sorted(FOLDER.glob("*.py")):
        if path.stem in ("__init__", "run"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        runs = any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body)
        if runs:
            found[path.stem] = (ast.get_docstring(tree) or "").split("\n")[0]
    return found


def load_package() -> None:
    """Registers this folder as the package `bench`, so that `bench.NAME` and its sibling imports resolve here."""
    spec = importlib.util.spec_from_file_location("bench", FOLDER / "__init__.py",
                                                  submodule_search_locations=[str(FOLDER)])
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = package
    spec.loader.exec_module(package)


def listing() -> str:
    known = benchmarks()
    width = max(map(len, known))
    lines = ["usage: python3 bench/run.py NAME [ARGS...]   (NAME --help: the benchmark's options)", "", "benchmarks:"]
    lines += [f"  {name:{width}}  {summary}" for name, summary in known.items()]
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
        print(listing())
        return 0
    if len(sys.argv) < 2 or sys.argv[1] not in benchmarks():
        if len(sys.argv) > 1:
            print(f"run.py: no benchmark named '{sys.argv[1]}'\n", file=sys.stderr)
        print(listing(), file=sys.stderr)
        return 2
    name = sys.argv[1]
    load_package()
    # alter_sys: the benchmark is sys.modules["__main__"] while it runs, and sys.argv[0] is its file.
    sys.argv = [sys.argv[0], *sys.argv[2:]]
    runpy.run_module(f"bench.{name}", run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
