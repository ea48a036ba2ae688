"""Exercise 7: batch normalisation from scratch, against pycnn's kernel.

    python examples/07_batch_norm.py

In training mode batch-norm normalises each channel with the mean and the
(biased) variance of the current batch -- over (N, H, W) for a convolution's
output, over N for a fully connected layer's -- then scales by gamma and
shifts by beta. It also keeps moving averages of the mean and variance, which
prediction mode uses instead of the batch's: the output of one example then no
longer depends on the rest of its batch.

The course writes the moving averages as moving = m * moving + (1 - m) * batch
with m = 0.9. PyTorch's `momentum` is the weight of the new value, 1 - m = 0.1,
and its moving variance takes the unbiased batch variance (n / (n - 1) times
the biased one). The from-scratch function below does the course's rule, or
PyTorch's with unbiased=True; pycnn.functional.batch_norm (pycnn's kernel) is
checked against it and against native torch.nn.functional.batch_norm.

Prints, for a convolutional (4, 3, 5, 5) and a fully connected (8, 6) input:
the per-channel mean and standard deviation of the output in training mode
(0 and 1), the moving statistics after three batches under both rules, and
the prediction-mode output's statistics (no longer exactly 0 and 1).
"""
from _check import check

import torch
import torch.nn.functional as F

import pycnn.functional as PF
import pycnn.nn as pnn


def batch_norm(X, gamma, beta, moving_mean, moving_var, eps, m, training, unbiased=False):
    """The course's batch-norm (m: the weight of the old moving value).

    unbiased=True updates the moving variance with the unbiased batch variance, as PyTorch."""
    if not training:
        # Prediction mode: the moving statistics.
        X_hat = (X - moving_mean) / torch.sqrt(moving_var + eps)
    else:
        assert len(X.shape) in (2, 4)
        dims = (0,) if len(X.shape) == 2 else (0, 2, 3)  # every axis but the channels
        mean = X.mean(dim=dims, keepdim=True)
        var = ((X - mean) ** 2).mean(dim=dims, keepdim=True)  # biased: divided by n
        X_hat = (X - mean) / torch.sqrt(var + eps)
        n = X.numel() // X.shape[1]
        update_var = var * n / (n - 1) if unbiased else var
        moving_mean = m * moving_mean + (1.0 - m) * mean
        moving_var = m * moving_var + (1.0 - m) * update_var
    return gamma * X_hat + beta, moving_mean, moving_var


def per_channel(Y):
    """Mean and (biased) standard deviation of each channel of Y, rounded."""
    dims = (0,) if Y.dim() == 2 else (0, 2, 3)
    return ([round(v, 3) + 0.0 for v in Y.mean(dims).tolist()],
            [round(v, 3) for v in Y.std(dims, unbiased=False).tolist()])


torch.manual_seed(0)
eps, m = 1e-5, 0.9
for shape in [(4, 3, 5, 5), (8, 6)]:
    channels = shape[1]
    stat_shape = (1, channels, 1, 1) if len(shape) == 4 else (1, channels)
    gamma, beta = torch.ones(stat_shape), torch.zeros(stat_shape)
    course = (torch.zeros(stat_shape), torch.ones(stat_shape))   # the course's moving statistics
    torchs = (torch.zeros(stat_shape), torch.ones(stat_shape))   # PyTorch's rule, from scratch
    running_mean, running_var = torch.zeros(channels), torch.ones(channels)  # pycnn's, updated in place
    native_mean, native_var = torch.zeros(channels), torch.ones(channels)    # native's
    print(f"input {shape}:")
    for step in range(3):
        X = torch.randn(shape) * 2 + 3  # batches with mean 3 and standard deviation 2
        Y, *course = batch_norm(X, gamma, beta, *course, eps, m, training=True)
        _, *torchs = batch_norm(X, gamma, beta, *torchs, eps, m, training=True, unbiased=True)
        ours = PF.batch_norm(X, running_mean, running_var, gamma.flatten(), beta.flatten(),
                             training=True, momentum=1 - m, eps=eps)
        native = F.batch_norm(X, native_mean, native_var, gamma.flatten(), beta.flatten(),
                              training=True, momentum=1 - m, eps=eps)
        check(f"{shape} training output, step {step}", ours, Y, atol=1e-5)
        check(f"{shape} training output against native, step {step}", ours, native, atol=1e-5)
        check(f"{shape} running mean, step {step}", running_mean, torchs[0].flatten())
        check(f"{shape} running variance, step {step}", running_var, torchs[1].flatten())
        check(f"{shape} running statistics against native, step {step}",
              torch.cat([running_mean, running_var]), torch.cat([native_mean, native_var]))
    mean, std = per_channel(ours)
    print(f"  training mode, per channel: mean {mean}, std {std}")
    # From 0, three updates move the mean 1 - 0.9^3 = 27% of the way to the batches' 3.
    print(f"  moving mean after 3 batches:                 {[round(v, 4) for v in running_mean.tolist()]}")
    print(f"  moving variance, the course's rule (biased): {[round(v, 4) for v in course[1].flatten().tolist()]}")
    print(f"  moving variance, PyTorch's rule (unbiased):  {[round(v, 4) for v in running_var.tolist()]}")

    # Prediction mode: a new batch normalised with the moving statistics.
    X = torch.randn(shape) * 2 + 3
    Y, *_ = batch_norm(X, gamma, beta, *torchs, eps, m, training=False)
    ours = PF.batch_norm(X, running_mean, running_var, gamma.flatten(), beta.flatten(), training=False, eps=eps)
    check(f"{shape} prediction output", ours, Y, atol=1e-5)
    check(f"{shape} prediction output against native",
          ours, F.batch_norm(X, native_mean, native_var, gamma.flatten(), beta.flatten(), training=False, eps=eps),
          atol=1e-5)
    mean, std = per_channel(ours)
    print(f"  prediction mode, per channel: mean {mean}, std {std}")

# The layers: pycnn.nn.BatchNorm2d is a torch.nn.BatchNorm2d (momentum=0.1,
# gamma = 1, beta = 0 at the start) whose forward is pycnn's; .train() and
# .eval() switch between the two modes.
layer, native = pnn.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
for _ in range(3):
    X = torch.randn(4, 3, 5, 5)
    check("BatchNorm2d, training mode", layer(X), native(X), atol=1e-5)
layer.eval(), native.eval()
X = torch.randn(4, 3, 5, 5)
check("BatchNorm2d, prediction mode", layer(X), native(X), atol=1e-5)
check("BatchNorm2d state", torch.cat([layer.running_mean, layer.running_var]),
      torch.cat([native.running_mean, native.running_var]))
print("pycnn.nn.BatchNorm2d: training and prediction modes agree with torch.nn.BatchNorm2d,"
      f" num_batches_tracked {int(layer.num_batches_tracked)}")
print("all agree with the from-scratch version and with native PyTorch")
