"""python -m pycnn.models summary NAME [--input-size C H W] [--backend pycnn|native]
[--num-classes N] [--option KEY=VALUE ...];  python -m pycnn.models list;
python -m pycnn.models draw NAME --out NAME.png [--input-size C H W] [--option KEY=VALUE ...];
python -m pycnn.models features NAME [--checkpoint runs/NAME/checkpoint.pt] --out F.png [--index I]
[--data-dir DIR]

draw: a picture of the model's stages with their output shapes and parameter
counts. features: the first convolution's kernels of a trained model (a
pycnn.train checkpoint, or a bare state_dict) and their activation maps on a
Fashion-MNIST test image (pycnn.models.draw). Both write a PNG (matplotlib).
Exit status 2, with a one-line message, for a missing checkpoint or data set.
"""
import argparse
import ast
import os
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
    d = commands.add_parser("draw", help="a PNG of the model's stages, output shapes and parameter counts")
    d.add_argument("name", help=", ".join(models.list_models()))
    d.add_argument("--out", required=True, help="the PNG to write")
    d.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), default=None,
                   help="input size (default: the model's default_input_size); C sets in_channels")
    d.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                   help="an architecture option, e.g. --option width_divisor=4 for vgg11")
    f = commands.add_parser("features", help="a PNG of a trained model's first-layer kernels and activations")
    f.add_argument("name", help=", ".join(models.list_models()))
    f.add_argument("--checkpoint", default=None,
                   help="a pycnn.train checkpoint or a saved state_dict (default: runs/NAME/checkpoint.pt)")
    f.add_argument("--out", required=True, help="the PNG to write")
    f.add_argument("--index", type=int, default=0, help="which Fashion-MNIST test image (default 0)")
    f.add_argument("--data-dir", default=None, help="directory of the IDX files (default: pycnn.data's)")
    args = parser.parse_args(argv)

    if args.command == "draw":
        return _draw(parser, args)
    if args.command == "features":
        return _features(parser, args)
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


def _fail(parser, command: str, message: str) -> int:
    print(f"{parser.prog} {command}: error: {message}", file=sys.stderr)
    return 2


def _draw(parser, args) -> int:
    from pycnn.models.draw import draw_model

    in_channels = args.input_size[0] if args.input_size else 1
    try:
        model = models.create(args.name, in_channels=in_channels, **dict(args.option))
        draw_model(model, args.out, args.input_size)
    except (ValueError, TypeError) as error:
        parser.error(str(error))
    except RuntimeError as error:  # a size the model cannot take, or matplotlib missing
        return _fail(parser, "draw", str(error).splitlines()[0])
    except OSError as error:
        return _fail(parser, "draw", f"cannot write {args.out}: {error}")
    print(f"wrote {args.out}")
    return 0


def load_checkpoint_model(name: str, path: str):
    """The model `name` with the weights of `path` -- a pycnn.train checkpoint (its config's
    model options and input size are used) or a bare state_dict -- and the input side it was
    trained at (None: the model's default). Raises ValueError with a message saying what is wrong."""
    import torch

    if not os.path.isfile(path):
        raise ValueError(f"no checkpoint at {path}; train one with: python -m pycnn.train --model {name} "
                         f"(it writes runs/{name}/checkpoint.pt), or pass --checkpoint PATH")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # zip, pickle, EOF: not a file torch can read
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"{path} is corrupt or not a torch checkpoint ({first[:200]})") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint or a state_dict")
    config = checkpoint.get("config") if isinstance(checkpoint.get("config"), dict) else {}
    state = checkpoint.get("model", checkpoint)
    if config.get("model") not in (None, name):
        raise ValueError(f"{path} is a checkpoint of model {config['model']!r}, not {name!r}")
    model = models.create(name, **dict(config.get("model_options") or {}))
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} does not hold {name}'s weights: {str(error).splitlines()[0]}") from None
    return model, config.get("resize")


def _features(parser, args) -> int:
    from pycnn import data
    from pycnn.models.draw import draw_features

    path = args.checkpoint or os.path.join("runs", args.name, "checkpoint.pt")
    try:
        model, side = load_checkpoint_model(args.name, path)
        size = model.checked_input_size(side)[1:]
    except ValueError as error:
        return _fail(parser, "features", str(error))
    try:
        images, labels = data.load_split("test", args.data_dir)
    except (data.DataNotFoundError, ValueError) as error:
        return _fail(parser, "features", str(error))
    if not 0 <= args.index < len(labels):
        return _fail(parser, "features", f"--index {args.index} is out of range 0..{len(labels) - 1}")
    import torch

    image = data.prepare_images(torch.from_numpy(images[args.index:args.index + 1]).unsqueeze(1), size)[0]
    try:
        draw_features(model, image, args.out, label=int(labels[args.index]), classes=data.CLASSES,
                      title=f"{args.name}, test image {args.index}")
    except RuntimeError as error:
        return _fail(parser, "features", str(error).splitlines()[0])
    except OSError as error:
        return _fail(parser, "features", f"cannot write {args.out}: {error}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
