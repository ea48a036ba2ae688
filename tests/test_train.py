"""pycnn.train: short CPU runs on the real Fashion-MNIST (files, resume, backends, errors, torchrun)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from pycnn import data as pdata
from pycnn import train as ptrain

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(
    not os.path.isdir(pdata.DEFAULT_DATA_DIR),
    reason=f"Fashion-MNIST is not installed in {pdata.DEFAULT_DATA_DIR} (apt-get install {pdata.DEBIAN_PACKAGE})")

# Small, deterministic runs: in-order data loading in this process, a test subset.
FAST = ["--workers", "0", "--limit-test", "1000", "--quiet"]
METRIC_KEYS = {"epoch", "train_loss", "train_acc", "test_acc", "examples_per_sec"}


def run(*argv):
    return ptrain.main([str(a) for a in argv])


def cli(*argv, env=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "pycnn.train", *map(str, argv)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def metrics(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


def checkpoint(out):
    return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)


def test_short_run_writes_files(tmp_path):
    out = tmp_path / "run"
    assert run("--model", "lenet", "--recipe", "best", "--limit-train", 6400, "--epochs", 2, "--batch-size", 64,
               "--out", out, *FAST) == 0
    records = metrics(out)
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(METRIC_KEYS <= set(r) for r in records)
    assert records[1]["train_loss"] < records[0]["train_loss"] < 2.30  # ln 10: chance
    assert records[1]["test_acc"] > 0.6 and records[1]["examples_per_sec"] > 0
    ckpt = checkpoint(out)
    assert {"model", "optimizer", "scheduler", "epoch", "config", "rng", "metrics"} <= set(ckpt)
    assert ckpt["epoch"] == 2 and ckpt["config"]["model"] == "lenet" and ckpt["config"]["batch_size"] == 64
    assert {"lr", "optimizer", "schedule", "seed", "backend", "augment", "label_smoothing"} <= set(ckpt["config"])
    import pycnn.models
    pycnn.models.create("lenet").load_state_dict(ckpt["model"])
    with open(out / "curves.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no temporary files left


@pytest.mark.parametrize("recipe", sorted(ptrain.RECIPES))
def test_every_recipe_fits_its_model(recipe):
    # A recipe's resize must be an input its model takes (DenseNet, say, cannot take 28x28:
    # its last transition would pool a 1x1 map), and its batch size and lr must be valid.
    import pycnn.models
    for name in ptrain.RECIPES[recipe]:
        config = ptrain.resolve_config(ptrain.build_parser().parse_args(["--model", name, "--recipe", recipe]), None)
        assert config["recipe"] == recipe and config["epochs"] == (14 if (name, recipe) == ("resnet9", "best") else 10)
        model = pycnn.models.create(name, **config["model_options"])
        assert list(model.stage_shapes(model.checked_input_size(config["resize"])).values())[-1] == (10,)


def test_input_size_the_model_cannot_take(tmp_path, capsys):
    assert run("--model", "densenet", "--resize", 28, "--out", tmp_path, *FAST) == 2
    err = capsys.readouterr().err
    assert "densenet cannot take 28x28 inputs" in err and "avg_pool2d" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "checkpoint.pt")


class Killed(Exception):
    pass


@pytest.mark.parametrize("schedule", ["constant", "onecycle"])
def test_resume_matches_uninterrupted(tmp_path, monkeypatch, schedule):
    common = ["--model", "lenet_bn", "--limit-train", 640, "--batch-size", 64, "--epochs", 2, "--augment",
              "--schedule", schedule, "--momentum", 0.9, "--lr", 0.1, "--seed", 3, *FAST]
    assert run(*common, "--out", tmp_path / "full") == 0
    # the same command, killed after epoch 1 (its checkpoint written), then resumed
    real_plot = ptrain.plot_curves

    def plot_then_die(path, records, title):
        real_plot(path, records, title)
        raise KeyboardInterrupt

    monkeypatch.setattr(ptrain, "plot_curves", plot_then_die)
    assert run(*common, "--out", tmp_path / "part") == 130
    assert checkpoint(tmp_path / "part")["epoch"] == 1
    monkeypatch.setattr(ptrain, "plot_curves", real_plot)
    resume = ["--model", "lenet_bn", "--resume", "--out", tmp_path / "part", *FAST]  # options from the checkpoint
    assert run(*resume) == 0
    full, part = checkpoint(tmp_path / "full"), checkpoint(tmp_path / "part")
    assert part["epoch"] == 2
    for key, value in full["model"].items():
        torch.testing.assert_close(part["model"][key], value, rtol=0, atol=1e-6, msg=key)
    fields = ("epoch", "train_loss", "train_acc", "test_acc")
    part_records, full_records = metrics(tmp_path / "part"), metrics(tmp_path / "full")
    assert [r["epoch"] for r in part_records] == [r["epoch"] for r in full_records] == [1, 2]
    # One approx per record: pytest >= 9 refuses approx over a list of dicts.
    for part_record, full_record in zip(part_records, full_records):
        assert {k: part_record[k] for k in fields} == pytest.approx({k: full_record[k] for k in fields}, abs=1e-6)


def test_resume_can_extend_constant_schedule(tmp_path):
    common = ["--model", "lenet", "--limit-train", 256, "--batch-size", 64, "--out", tmp_path, *FAST]
    assert run(*common, "--epochs", 1) == 0
    assert run(*common, "--epochs", 2, "--resume") == 0
    assert [r["epoch"] for r in metrics(tmp_path)] == [1, 2]


def test_backends_agree(tmp_path):
    losses = {}
    for backend in ("pycnn", "native"):
        out = tmp_path / backend
        assert run("--model", "lenet_bn", "--backend", backend, "--limit-train", 1024, "--batch-size", 64,
                   "--epochs", 1, "--seed", 7, "--out", out, *FAST) == 0
        losses[backend] = metrics(out)[0]
    assert losses["pycnn"]["train_loss"] == pytest.approx(losses["native"]["train_loss"], rel=1e-4)
    assert losses["pycnn"]["test_acc"] == pytest.approx(losses["native"]["test_acc"], abs=0.005)


def test_nan_stops_the_run(tmp_path, capsys):
    code = run("--model", "lenet", "--lr", 1e38, "--limit-train", 1024, "--batch-size", 64, "--epochs", 2,
               "--out", tmp_path, *FAST)
    err = capsys.readouterr().err
    assert code == 3
    assert "loss became nan" in err.lower() or "loss became inf" in err.lower()
    assert "diverged" in err and len(err.strip().splitlines()) == 1


def test_bad_checkpoints(tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"this is not a checkpoint")
    assert run("--model", "lenet", "--resume", "--out", tmp_path, *FAST) == 2
    assert "corrupt or not a pycnn.train checkpoint" in capsys.readouterr().err
    good = tmp_path / "good"
    assert run("--model", "lenet", "--limit-train", 128, "--epochs", 1, "--out", good, *FAST) == 0
    capsys.readouterr()
    assert run("--model", "lenet_bn", "--resume", "--out", good, *FAST) == 2
    assert "checkpoint is for model 'lenet', not 'lenet_bn'" in capsys.readouterr().err
    assert run("--model", "lenet", "--resume", "--lr", 0.5, "--out", good, *FAST) == 2
    assert "--lr 0.5 differs from the checkpoint's (0.9)" in capsys.readouterr().err
    assert run("--model", "lenet", "--resume", "--out", tmp_path / "none", *FAST) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    blob = (good / "checkpoint.pt").read_bytes()
    (truncated / "checkpoint.pt").write_bytes(blob[:len(blob) // 2])
    assert run("--model", "lenet", "--resume", "--out", truncated, *FAST) == 2
    assert "corrupt" in capsys.readouterr().err


def test_missing_data_is_one_line(tmp_path):
    result = cli("--model", "lenet", "--data-dir", tmp_path / "nowhere", "--out", tmp_path / "out", "--quiet")
    assert result.returncode == 2
    assert "dataset-fashion-mnist" in result.stderr and "--data-dir" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_torchrun_two_processes(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "pycnn.train", "--model", "lenet", "--limit-train", "512", "--epochs", "1", "--device", "cpu",
         "--workers", "0", "--limit-test", "1000", "--batch-size", "64", "--quiet", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("epoch   1/1") == 1  # only rank 0 prints and writes
    records = metrics(out)
    assert len(records) == 1 and METRIC_KEYS <= set(records[0])
    ckpt = checkpoint(out)
    assert ckpt["epoch"] == 1 and len(ckpt["rng"]) == 2
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "curves.png", "metrics.json"]
