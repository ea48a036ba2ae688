"""Exercise 8: the shape walk of each classic network.

    python examples/08_shape_walk.py                 # all eight models
    python examples/08_shape_walk.py resnet18 nin    # some of them
    python examples/08_shape_walk.py --size 96 googlenet

The course checks each architecture by sending one random image through it
block by block and printing the shape after each block. pycnn.models builds
every model as an nn.Sequential of named stages (ARCHITECTURES.md lists them),
so the walk is a loop over model.named_children(). The input is
X = torch.rand(1, 1, 224, 224) -- 28x28 for LeNet and LeNet-BN, whose first
fully connected layer is laid out for it (--size changes it for the others;
the course trains GoogLeNet, ResNet-18 and DenseNet at 96x96).

The stages are pycnn's (pycnn.nn's Conv2d, pooling and batch-norm); a native
twin (backend="native": the same architecture on torch.nn) with the same
weights takes the same walk, and every stage's output is checked against it.
Prints each stage's name, type and output shape, and the parameter count.
"""
import argparse

from _check import check

import torch

import pycnn.models


def walk(name, size):
    model = pycnn.models.create(name)  # pycnn's kernels
    twin = pycnn.models.create(name, backend="native")
    twin.load_state_dict(model.state_dict())
    model.eval(), twin.eval()  # dropout off, batch-norm with its running statistics
    X = torch.rand(1, *model.default_input_size[:1], size, size)
    Y = X
    print(f"{name}: X = torch.rand{tuple(X.shape)}")
    with torch.no_grad():
        for (stage, layer), native in zip(model.named_children(), twin.children()):
            X, Y = layer(X), native(Y)
            print(f"  {stage:<12} {type(layer).__name__:<18} output shape: {tuple(X.shape)}")
            check(f"{name} stage {stage}", X, Y, atol=1e-4, rtol=1e-3)
    print(f"  parameters: {sum(p.numel() for p in model.parameters()):,}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(pycnn.models.list_models()))
    parser.add_argument("--size", type=int, default=224, help="input height and width (LeNets: always 28)")
    args = parser.parse_args()
    torch.manual_seed(0)
    for name in args.names or pycnn.models.list_models():
        if name not in pycnn.models.list_models():
            parser.error(f"unknown model {name!r}; known: {', '.join(pycnn.models.list_models())}")
        walk(name, 28 if name.startswith("lenet") else args.size)
    print("every stage agrees with native PyTorch")


if __name__ == "__main__":
    main()
