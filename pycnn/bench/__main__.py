import argparse
import sys

import pycnn.bench
from pycnn.bench import models, ops, overhead


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m pycnn.bench", description=pycnn.bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    ops.add_arguments(commands.add_parser("ops", help="each operator against the native one, forward+backward"))
    models.add_arguments(commands.add_parser(
        "models", help="each classic model against its native twin: training step and inference"))
    overhead.add_arguments(commands.add_parser(
        "overhead", help="the fixed cost of one call of each operator, forward+backward, on tiny tensors"))
    args = parser.parse_args(argv)
    return {"ops": ops.run, "models": models.run, "overhead": overhead.run}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
