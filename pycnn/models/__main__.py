"""python -m pycnn.models summary NAME [--input-size C H W] [--backend pycnn|native]
[--num-classes N] [--option KEY=VALUE ...];  python -m pycnn.models list"""
import argparse
import ast
import sys

import pycnn.models as models


def _option(text):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        pass  # a plain string
    return key, value


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pycnn.models", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the model names")
    s = commands.add_parser("summary", help="each layer's output shape, parameters and MACs, with totals")
    s.add_argument("name", help=", ".join(models.list_models()))
    s.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), default=None,
                   help="input size (default: the model's default_input_size); C sets in_channels")
    s.add_argument("--backend", choices=sorted(models.BACKENDS), default="pycnn")
    s.add_argument("--num-classes", type=int, default=10)
    s.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                   help="an architecture option, e.g. --option width_divisor=4 for vgg11")
    args = parser.parse_args(argv)

    if args.command == "list":
        for name in models.list_models():
            print(name)
        return 0
    in_channels = args.input_size[0] if args.input_size else 1
    try:
        model = models.create(args.name, num_classes=args.num_classes, in_channels=in_channels,
                              backend=args.backend, **dict(args.option))
    except (ValueError, TypeError) as error:
        parser.error(str(error))
    print(models.summary(model, args.input_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
