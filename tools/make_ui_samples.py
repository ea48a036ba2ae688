"""Writes the serving page's sample images: the first Fashion-MNIST test images
of each class, as 28x28 grey PNGs, and their manifest.

    python tools/make_ui_samples.py        # -> export/serve/ui/samples/*.png, samples.json

The page (export/serve/ui) offers them one click away; tests/test_serve_ui.py
checks that they are exactly these test images.
"""
import argparse
import json
import os
import sys

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
OUT = os.path.join(ROOT, "export", "serve", "ui", "samples")


def sample_indices(labels, per_class=1):
    """The index of the first test image of each class, in class order."""
    chosen = []
    for label in range(int(labels.max()) + 1):
        chosen.extend([int(i) for i in (labels == label).nonzero()[0][:per_class]])
    return chosen


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=OUT, help="folder to write (default: the serving page's samples)")
    out = parser.parse_args(argv).out

    from pycnn.data import CLASSES, load_split

    images, labels = load_split("test")
    os.makedirs(out, exist_ok=True)
    manifest = []
    for index in sample_indices(labels):
        name = f"test{index:05d}.png"
        Image.fromarray(images[index], "L").save(os.path.join(out, name), optimize=True)
        manifest.append({"file": name, "test_index": index, "label": CLASSES[labels[index]]})
    with open(os.path.join(out, "samples.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print(f"wrote {len(manifest)} samples to {out}")


if __name__ == "__main__":
    main()
