"""Models for ``hvdkit train --framework torch``: small enough for a 2-core
machine (mlp, cnn) and the standard ResNet-18 for the benchmark.

``input_shape`` is one sample's channels-first shape: ``(C, H, W)`` for images,
``(C, L)`` for sequences (``--dataset mnist1d``), where ``cnn`` is the 1-D conv
net of the MNIST-1D paper (:func:`cnn1d`)."""
import math

import torch
from torch import nn


def mlp(input_shape, num_classes):
    features = math.prod(input_shape)
    return nn.Sequential(nn.Flatten(), nn.Linear(features, 128), nn.ReLU(),
                         nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, num_classes))


def conv1d_length(length, kernel, stride, padding):
    return (length + 2 * padding - kernel) // stride + 1


# The MNIST-1D paper's CNN (Greydanus & Kobak 2020, ConvBase in its repository): three strided
# convolutions of 25 channels, (kernel, stride, padding) each, then one linear layer on the flattened
# features. 5,210 parameters on its length-40 sequences and 10 classes.
CNN1D_CHANNELS = 25
CNN1D_CONVS = ((5, 2, 1), (3, 2, 1), (3, 2, 1))


def cnn1d(input_shape, num_classes):
    channels, length = input_shape
    layers = []
    for kernel, stride, padding in CNN1D_CONVS:
        layers += [nn.Conv1d(channels, CNN1D_CHANNELS, kernel, stride, padding), nn.ReLU()]
        channels, length = CNN1D_CHANNELS, conv1d_length(length, kernel, stride, padding)
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * length, num_classes))


def cnn(input_shape, num_classes):
    """A small 2-D conv net for images; for 1-D inputs ``(C, L)``, the MNIST-1D CNN (:func:`cnn1d`)."""
    if len(input_shape) == 2:
        return cnn1d(input_shape, num_classes)
    channels = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(64 * 4, 128), nn.ReLU(), nn.Linear(128, num_classes))


class BasicBlock(nn.Module):
    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 (11.2 M parameters at 1000 classes) with a 3x3 stem, the usual
    choice for small images; the block layout is He et al.'s."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(input_shape[0], 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers, channels = [], 64
        for out_channels, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(channels, out_channels, stride), BasicBlock(out_channels, out_channels, 1)]
            channels = out_channels
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))

    def forward(self, x):
        return self.head(self.layers(self.stem(x)))


MODELS = {"mlp": mlp, "cnn": cnn, "resnet18": ResNet18}


def build(name, input_shape, num_classes):
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if name == "resnet18" and len(input_shape) != 3:
        raise ValueError(f"resnet18 takes (C, H, W) images, not samples of shape {tuple(input_shape)}")
    return MODELS[name](tuple(input_shape), num_classes)
