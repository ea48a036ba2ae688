"""pycnn.train's fine-tuning and augmentation options on tiny CPU runs:
--init from a checkpoint of another head (re-initialised and reported),
--freeze (the frozen tensors leave the run as they came), --head-lr-mult (the
head's rate in the optimizer), --weights offline (a clear error naming the
file), --augment PRESET with an exact resume, and the errors."""
import os

import pytest
import torch

from pycnn import data as pdata
from pycnn import train as ptrain

needs_data = pytest.mark.skipif(not os.path.isdir(pdata.DEFAULT_DATA_DIR), reason="Fashion-MNIST is not installed")
TINY = ["--model", "lenet_bn", "--limit-train", 256, "--limit-test", 256, "--batch-size", 64, "--epochs", 1,
        "--workers", 0, "--quiet"]


def run(*argv):
    return ptrain.main([str(a) for a in argv])


def checkpoint(out):
    return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)


@needs_data
def test_init_freeze_and_head_rate(tmp_path, capsys):
    source = tmp_path / "source"
    assert run(*TINY, "--num-classes", 12, "--out", source) == 0
    base = checkpoint(source)["model"]
    head = [name for name in base if name.startswith(next(iter(reversed(base))).rsplit(".", 1)[0])]
    frozen_prefix = next(iter(base)).split(".")[0]
    out = tmp_path / "tuned"
    capsys.readouterr()
    loud = [a for a in TINY if a != "--quiet"]  # the report is part of the banner
    assert run(*loud, "--init", source / "checkpoint.pt", "--freeze", frozen_prefix, "--head-lr-mult", 10,
               "--lr", 0.05, "--out", out) == 0
    printed = capsys.readouterr().out
    assert "re-initialised (shape differs from the file's)" in printed and "frozen:" in printed
    tuned = checkpoint(out)
    for name, value in tuned["model"].items():
        if name.startswith(frozen_prefix + ".") and "running" not in name and "num_batches" not in name:
            assert torch.equal(value, base[name]), name  # frozen: as loaded
    assert tuned["model"][head[0]].shape[0] == 10  # the new head, for 10 classes
    groups = tuned["optimizer"]["param_groups"]
    assert len(groups) == 2 and groups[1]["lr"] == pytest.approx(10 * groups[0]["lr"])
    assert tuned["config"]["init"] == str(source / "checkpoint.pt") and tuned["config"]["freeze"] == [frozen_prefix]
    # Resuming keeps the run's own weights (no second --init) and its groups.
    assert run("--model", "lenet_bn", "--resume", "--epochs", 2, "--out", out, "--workers", 0, "--quiet") == 0
    assert checkpoint(out)["epoch"] == 2


@needs_data
def test_augment_presets_resume_exactly(tmp_path):
    common = [*TINY, "--augment", "course", "--seed", 3]
    full, part = tmp_path / "full", tmp_path / "part"
    assert run(*common, "--epochs", 2, "--out", full) == 0
    assert run(*common, "--out", part) == 0
    assert run("--model", "lenet_bn", "--resume", "--epochs", 2, "--out", part, "--workers", 0, "--quiet") == 0
    a, b = checkpoint(full), checkpoint(part)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["config"]["augment"] == "course"


@needs_data
def test_errors_are_one_line(tmp_path, capsys, monkeypatch):
    assert run(*TINY, "--init", tmp_path / "none.pt", "--out", tmp_path / "a") == 2
    assert "no such file" in capsys.readouterr().err
    assert run(*TINY, "--freeze", "nothing", "--out", tmp_path / "b") == 2
    assert "its top-level modules" in capsys.readouterr().err
    assert run(*TINY, "--weights", "ResNet18_Weights.IMAGENET1K_V1", "--out", tmp_path / "c") == 2
    assert "--weights names torchvision weights" in capsys.readouterr().err
    pytest.importorskip("torchvision")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    tv = ["--model", "tv:resnet18", "--resize", 32, "--limit-train", 64, "--limit-test", 64, "--batch-size", 32,
          "--epochs", 1, "--workers", 0, "--quiet"]
    assert run(*tv, "--weights", "ResNet18_Weights.IMAGENET1K_V1", "--out", tmp_path / "d") == 2
    err = capsys.readouterr().err
    assert "resnet18-f37072fd.pth is not in" in err and "copy it to" in err


@needs_data
def test_classes_new_head_and_transfer(tmp_path, capsys):
    """The transfer experiment's steps: train on classes 0-4 (5 outputs by default),
    then fine-tune on 5-9 from those weights with the output layer re-initialised."""
    source, tuned = tmp_path / "source", tmp_path / "tuned"
    assert run(*TINY, "--classes", "0-4", "--out", source) == 0
    base = checkpoint(source)
    assert base["config"]["classes"] == [0, 1, 2, 3, 4] and base["config"]["num_classes"] == 5
    assert base["model"]["fc3.weight"].shape[0] == 5
    capsys.readouterr()
    loud = [a for a in TINY if a != "--quiet"]
    assert run(*loud, "--classes", "5-9", "--init", source / "checkpoint.pt", "--new-head", "--out", tuned) == 0
    printed = capsys.readouterr().out
    assert "re-initialised (shape differs from the file's): fc3.weight, fc3.bias" in printed
    assert "256 training" in printed
    # The head started from the fresh initialisation, not the file's: same seed, same init.
    fresh = tmp_path / "fresh"
    assert run(*TINY, "--classes", "5-9", "--epochs", 1, "--limit-train", 64, "--lr", 1e-12, "--out", fresh) == 0
    assert not torch.allclose(checkpoint(fresh)["model"]["fc3.weight"], base["model"]["fc3.weight"])


def test_classes_parsing_and_errors(tmp_path, capsys):
    assert ptrain._classes("0-2,8") == [0, 1, 2, 8]
    assert ptrain._classes("9") == [9]
    for bad, message in [("0-10", "not a Fashion-MNIST label"), ("1,1", "names a label twice"),
                         ("a-b", "not a list of labels")]:
        with pytest.raises(SystemExit):
            ptrain.build_parser().parse_args(["--model", "lenet", "--classes", bad])
        assert message in capsys.readouterr().err
    assert run(*TINY, "--classes", "0-4", "--num-classes", 3, "--out", tmp_path / "a") == 2
    assert "--num-classes must be at least 5 (the labels of --classes)" in capsys.readouterr().err
    assert run(*TINY, "--new-head", "--out", tmp_path / "b") == 2
    assert "--new-head re-initialises the output layer of --init or --weights" in capsys.readouterr().err


def test_dataset_classes_relabel_in_order():
    if not os.path.isdir(pdata.DEFAULT_DATA_DIR):
        pytest.skip("Fashion-MNIST is not installed")
    full = pdata.FashionMNIST("test")
    part = pdata.FashionMNIST("test", classes=(9, 0))
    assert part.classes == (pdata.CLASSES[9], pdata.CLASSES[0])
    keep = (full.labels == 9) | (full.labels == 0)
    assert torch.equal(part.images, full.images[keep])
    assert torch.equal(part.labels, torch.where(full.labels[keep] == 9, 0, 1))
    with pytest.raises(ValueError, match="at least one label"):
        pdata.FashionMNIST("test", classes=())


def test_tta_evaluates_the_mirrored_images_too():
    """evaluate(tta=True) sums the logits of x and x.flip(-1): checked with a model
    whose logits are two corner pixels, which the mirror swaps."""
    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.seen = []

        def forward(self, x):
            self.seen.append(x.clone())
            return torch.stack([x[:, 0, 0, 0], x[:, 0, 0, 27]], 1)

    labels = torch.tensor([0, 1, 0, 1])
    images = torch.zeros(4, 1, 28, 28)
    images[labels == 0, 0, 0, 0] = 1.0  # plainly right: class 0 brighter on the left...
    images[labels == 1, 0, 0, 27] = 1.0  # ... class 1 on the right
    spy, ctx, cpu = Spy(), ptrain.Dist(), torch.device("cpu")
    assert ptrain.evaluate(spy, [(images, labels)], cpu, (28, 28), False, ctx, False) == 1.0
    assert len(spy.seen) == 1
    spy.seen.clear()
    # Mirrored, the two logits swap: the sums tie and argmax takes class 0 for all.
    assert ptrain.evaluate(spy, [(images, labels)], cpu, (28, 28), False, ctx, False, tta=True) == 0.5
    assert len(spy.seen) == 2 and torch.equal(spy.seen[1], images.flip(-1))


@needs_data
def test_transfer_experiment_tool(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "transfer_experiment", os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools",
                                            "transfer_experiment.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--sizes", "64,128", "--pretrain-epochs", "1", "--pretrain-limit", "256", "--epochs", "1",
                      "--limit-test", "128", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| 64 |") or line.startswith("| 128 |")]
    assert len(rows) == 2
    for row in rows:
        tuned, scratch = (float(cell) for cell in row.strip("|").split("|")[1:3])
        assert 0.0 <= tuned <= 1.0 and 0.0 <= scratch <= 1.0
    tuned = checkpoint(tmp_path / "finetune-64")
    assert tuned["config"]["new_head"] and tuned["config"]["classes"] == [5, 6, 7, 8, 9]
    assert tuned["config"]["init"] == os.path.join(str(tmp_path), "pretrain-0-4", "checkpoint.pt")
    assert checkpoint(tmp_path / "scratch-64")["config"]["init"] is None
