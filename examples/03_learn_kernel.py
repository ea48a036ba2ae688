"""Exercise 3: learning the edge kernel back from the input and the output.

    python examples/03_learn_kernel.py

Exercise 2 computed Y = corr2d(X, K) with K = [[1, -1]]. Here a convolutional
layer with a random 1x2 kernel and a scalar bias learns K back from (X, Y)
alone: 20 steps of plain gradient descent, learning rate 0.01, on the squared
error summed over the 6x7 output. pycnn computes the forward (corr2d) and the
backward (corr2d_backward_input / corr2d_backward_weight); a torch.nn.Conv2d
twin starts from the same weights and takes the same steps, and the script
stops (exit status 1) if the two gradients differ at any step.

Prints the loss every 5 steps and the learnt weight and bias: the loss falls
from about 6 at step 5 to about 0.1 at step 20 and the weight approaches [[1, -1]], the bias 0
(the course prints 8.01, 1.52, 0.332, 0.0804 from its own random start).
"""
from _check import check

import torch

import pycnn.nn as pnn

torch.manual_seed(0)  # a fixed random start, so every run prints the same numbers
start = torch.rand(1, 1, 1, 2)  # the course's start: weight uniform in [0, 1), bias 0
X = torch.ones((6, 8))
X[:, 2:6] = 0
K = torch.tensor([[1.0, -1.0]])
Y = torch.nn.functional.conv2d(X.reshape(1, 1, 6, 8), K.reshape(1, 1, 1, 2))  # the target, (1, 1, 6, 7)
X = X.reshape(1, 1, 6, 8)  # (batch, channels, height, width)

layer = pnn.Conv2d(1, 1, kernel_size=(1, 2), bias=True)
twin = torch.nn.Conv2d(1, 1, kernel_size=(1, 2), bias=True)  # native, for the check
with torch.no_grad():
    layer.weight.copy_(start)
    layer.bias.zero_()
twin.load_state_dict(layer.state_dict())
print(f"start:    weight {[round(v, 4) for v in layer.weight.data.reshape(2).tolist()]}, bias {layer.bias.item():.4f}")

lr = 0.01
for step in range(1, 21):
    losses = []
    for net in (layer, twin):
        net.zero_grad()
        loss = ((net(X) - Y) ** 2).sum()  # squared error, summed over the output
        loss.backward()
        losses.append(loss.item())
    check(f"loss at step {step}", torch.tensor(losses[0]), torch.tensor(losses[1]))
    check(f"weight gradient at step {step}", layer.weight.grad, twin.weight.grad)
    check(f"bias gradient at step {step}", layer.bias.grad, twin.bias.grad)
    with torch.no_grad():
        for net in (layer, twin):
            net.weight -= lr * net.weight.grad
            net.bias -= lr * net.bias.grad
    if step % 5 == 0:
        print(f"step {step:2d}, loss {losses[0]:.4g}")

print(f"learnt:   weight {[round(v, 4) for v in layer.weight.data.reshape(2).tolist()]}, "
      f"bias {layer.bias.item():.4f}   (K = [[1, -1]], bias 0)")
check("learnt weight", layer.weight, twin.weight)
check("learnt bias", layer.bias, twin.bias)
print("pycnn's gradients equal native's at every step")
