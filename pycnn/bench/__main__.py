import argparse
import sys

from pycnn.bench import ops


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pycnn.bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    ops.add_arguments(commands.add_parser("ops", help="each operator against the native one, forward+backward"))
    args = parser.parse_args(argv)
    return {"ops": ops.run}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
