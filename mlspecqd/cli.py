"""The `mlspecqd` command line. Bad arguments exit with code 2 and a message that says what and where."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from mlspecqd import _native


class UsageError(Exception):
    """An argument or input the user can fix: printed without a traceback, exit code 2."""


def cmd_info(args: argparse.Namespace) -> int:
    features = _native.cpu_features()
    print("cpu features: " + " ".join(name for name, present in sorted(features.items()) if present))
    print("missing:      " + (" ".join(name for name, present in sorted(features.items()) if not present) or "-"))
    print(f"kernels:      {_native.active_isa()} (supported: {', '.join(_native.supported_isas())})")
    print(f"threads:      {_native.num_threads()} (physical cores available: {_native.default_num_threads()})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlspecqd", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="CPU features and the kernels that will run")
    info.set_defaults(run=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except UsageError as error:
        print(f"mlspecqd {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
