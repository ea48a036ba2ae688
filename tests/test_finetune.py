"""pycnn.finetune: initialising from a checkpoint, a state_dict or torchvision's
weights (by name, with a clear offline error), re-initialising and reporting
what does not fit, RGB kernels summed for grey input, freezing by prefix (the
frozen parameters unchanged after a step) and the head's learning rate."""
import pytest
import torch

import pycnn.models
from pycnn import finetune


def lenet(num_classes=10, seed=0):
    torch.manual_seed(seed)
    return pycnn.models.create("lenet_bn", num_classes=num_classes)


def test_init_from_a_checkpoint_reinitialises_the_new_head(tmp_path):
    source = lenet(10, seed=1)
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": source.state_dict(), "config": {"model": "lenet_bn"}}, path)
    target = lenet(5, seed=2)
    fresh_head = {n: p.clone() for n, p in target.named_parameters() if p.shape[0] == 5}
    report = finetune.load_init(target, str(path))
    assert report.reinitialised and all(name in report.reinitialised for name in fresh_head)
    for name, parameter in target.named_parameters():
        if name in fresh_head:
            assert torch.equal(parameter, fresh_head[name])  # the model's own initialisation, kept
        else:
            assert torch.equal(parameter, source.state_dict()[name])
    assert any("re-initialised" in line for line in report.lines())
    # A plain state_dict, saved from a DDP wrapper, loads the same way.
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, tmp_path / "plain.pt")
    again = finetune.load_init(lenet(10, seed=3), str(tmp_path / "plain.pt"))
    assert not again.reinitialised and not again.unexpected and not again.missing


def test_rgb_first_layer_is_summed_for_grey_input():
    grey = lenet()
    name = next(n for n, p in grey.named_parameters() if p.dim() == 4)
    rgb = grey.state_dict()[name].repeat(1, 3, 1, 1) * torch.tensor([0.2, 0.3, 0.5]).view(1, 3, 1, 1)
    report = finetune.load_state(grey, {name: rgb})
    assert report.adapted == [name]
    torch.testing.assert_close(grey.state_dict()[name], rgb.sum(1, keepdim=True))


def test_bad_files_and_offline_weights_are_clear(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no such file"):
        finetune.load_init(lenet(), str(tmp_path / "none.pt"))
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a pycnn checkpoint"):
        finetune.load_init(lenet(), str(tmp_path / "list.pt"))
    pytest.importorskip("torchvision")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(FileNotFoundError, match=r"resnet18-f37072fd\.pth is not in .*fetch https://download"):
        finetune.load_torchvision_weights(lenet(), "ResNet18_Weights.IMAGENET1K_V1")
    with pytest.raises(ValueError, match="not a torchvision weights name"):
        finetune.load_torchvision_weights(lenet(), "ResNet99_Weights.NOPE")


def test_frozen_parameters_do_not_move_and_the_head_trains_faster():
    model = lenet()
    top = sorted({name.split(".")[0] for name, _ in model.named_parameters()})
    frozen = finetune.freeze(model, [top[0]])
    assert frozen and all(not p.requires_grad for n, p in model.named_parameters() if n in frozen)
    groups = finetune.parameter_groups(model, lr=0.01, head_lr_mult=10)
    assert [g["lr"] for g in groups] == [0.01, pytest.approx(0.1)]
    head = finetune.head_prefix(model)
    assert all(p is not q for g in groups for p in g["params"] for n, q in model.named_parameters() if n in frozen)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(groups, lr=0.01)
    model.train()
    loss = torch.nn.functional.cross_entropy(model(torch.rand(8, 1, 28, 28)), torch.arange(8) % 10)
    loss.backward()
    optimizer.step()
    for name, parameter in model.named_parameters():
        moved = not torch.equal(parameter, before[name])
        assert moved == (name not in frozen), name
    head_step = [(before[n] - p).abs().max() for n, p in model.named_parameters() if n.startswith(head + ".")]
    assert head_step and all(step > 0 for step in head_step)
    with pytest.raises(ValueError, match="no parameter of the model is under it; its top-level modules"):
        finetune.freeze(model, ["nothing_here"])
    finetune.freeze(model, top)
    with pytest.raises(ValueError, match="every parameter is frozen"):
        finetune.parameter_groups(model, lr=0.1)
