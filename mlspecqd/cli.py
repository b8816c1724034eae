"""The `mlspecqd` command line. Bad arguments exit with code 2 and a message that says what and where."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from mlspecqd import _native, hub


class UsageError(Exception):
    """An argument or input the user can fix: printed without a traceback, exit code 2."""


def cmd_info(args: argparse.Namespace) -> int:
    features = _native.cpu_features()
    print("cpu features: " + " ".join(name for name, present in sorted(features.items()) if present))
    print("missing:      " + (" ".join(name for name, present in sorted(features.items()) if not present) or "-"))
    print(f"kernels:      {_native.active_isa()} (supported: {', '.join(_native.supported_isas())})")
    print(f"threads:      {_native.num_threads()} (physical cores available: {_native.default_num_threads()})")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    names = list(hub.NAMED_MODELS) if args.all else args.names
    if not names:
        raise UsageError("name a model to pull (" + ", ".join(hub.NAMED_MODELS) + ") or give --all")
    for name in names:
        try:
            print(hub.pull(name, progress=not args.quiet))
        except hub.ModelNotFoundError as error:
            raise UsageError(str(error)) from None
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlspecqd", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="CPU features and the kernels that will run")
    info.set_defaults(run=cmd_info)
    pull = commands.add_parser("pull", help="download a named model into the cache and check it")
    pull.add_argument("names", nargs="*", metavar="NAME", help=", ".join(hub.NAMED_MODELS))
    pull.add_argument("--all", action="store_true", help="every named model")
    pull.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    pull.set_defaults(run=cmd_pull)
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
