"""The `calhl7` verbs. Each parses its arguments, calls the engine's parts and prints; options
can also come from CALHL7_* environment variables (read in engine.settings)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    from engine.cli import channels, inbound, operator, serve, sim, site
    from engine.cli.common import store_args

    parser = argparse.ArgumentParser(
        prog="calhl7", description="Cal.com bookings to HL7 v2 SIU over MLLP, and back.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    stores = store_args()
    serve.register(sub, stores)
    site.register(sub)
    operator.register(sub, stores)
    channels.register(sub)
    sim.register(sub)
    inbound.register(sub, stores)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
