"""The fine-tuning experiment of the README, on the data at hand: does a network
trained on half of Fashion-MNIST's classes help to learn the other half from
few labelled images?

    python tools/transfer_experiment.py                          # lenet_bn; 500, 1,000, 5,000 images
    python tools/transfer_experiment.py --model resnet9 --sizes 500,5000

1. Pretrain on classes 0-4 (T-shirt/top ... Coat: 30,000 training images).
2. For each size N: train on the first N training images of classes 5-9
   (Sandal ... Ankle boot), evaluated on all 5,000 test images of 5-9, twice
   with the same budget (epochs, batch, schedule, augmentation, seed):
   - fine-tuned: from step 1's weights with a new output layer (--init
     --new-head), the body at a tenth of the rate and the head at the full
     rate (--head-lr-mult 10, the course's recipe);
   - from scratch: a fresh network at the full rate.

Every run is a plain `python -m pycnn.train` run (the commands are printed) in
--out/NAME; the table gives each run's final test accuracy (Markdown).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pycnn import train as ptrain  # noqa: E402


def run(argv, out):
    argv = [str(a) for a in argv] + ["--out", str(out), "--quiet"]
    print("python -m pycnn.train " + " ".join(argv), flush=True)
    start = time.perf_counter()
    if ptrain.main(argv) != 0:
        raise SystemExit(f"the run in {out} failed")
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)[-1]["test_acc"], time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", default="lenet_bn", help="one of pycnn.models (default lenet_bn)")
    parser.add_argument("--sizes", default="500,1000,5000", help="labelled images of classes 5-9 (comma-separated)")
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--pretrain-limit", type=int, help="training images of classes 0-4 (default: all 30,000)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of each run on classes 5-9")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.2, help="the peak rate (SGD, momentum 0.9, one-cycle)")
    parser.add_argument("--augment", default="flip-crop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-test", type=int, help="test images of each half (default: all 5,000)")
    parser.add_argument("--out", default="runs/transfer")
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if any(n <= 0 for n in sizes):
        parser.error(f"--sizes: every size must be positive, got {args.sizes}")

    recipe = ["--model", args.model, "--optimizer", "sgd", "--momentum", 0.9, "--schedule", "onecycle",
              "--batch-size", args.batch_size, "--augment", args.augment, "--seed", args.seed,
              "--workers", args.workers]
    if args.limit_test:
        recipe += ["--limit-test", args.limit_test]
    source = os.path.join(args.out, "pretrain-0-4")
    pretrain = [*recipe, "--classes", "0-4", "--epochs", args.pretrain_epochs, "--lr", args.lr]
    if args.pretrain_limit:
        pretrain += ["--limit-train", args.pretrain_limit]
    pretrain_acc, pretrain_sec = run(pretrain, source)
    rows = []
    for n in sizes:
        half = [*recipe, "--classes", "5-9", "--limit-train", n, "--epochs", args.epochs]
        tuned, tuned_sec = run([*half, "--lr", args.lr / 10, "--head-lr-mult", 10, "--init",
                                os.path.join(source, "checkpoint.pt"), "--new-head"],
                               os.path.join(args.out, f"finetune-{n}"))
        scratch, scratch_sec = run([*half, "--lr", args.lr], os.path.join(args.out, f"scratch-{n}"))
        rows.append((n, tuned, scratch, tuned_sec + scratch_sec))

    print(f"\n{args.model}: pretrained on classes 0-4 ({args.pretrain_epochs} epochs, test accuracy "
          f"{pretrain_acc:.3f} on 0-4, {pretrain_sec:.0f} s); then {args.epochs} epochs on classes 5-9, "
          f"batch {args.batch_size}, one-cycle SGD, --augment {args.augment}, seed {args.seed}\n")
    print("| labelled images of 5-9 | fine-tuned | from scratch | difference |")
    print("|---:|---:|---:|---:|")
    for n, tuned, scratch, _ in rows:
        print(f"| {n:,} | {tuned:.3f} | {scratch:.3f} | {tuned - scratch:+.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
