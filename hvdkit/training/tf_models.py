"""Models for ``hvdkit train --framework tensorflow``: the Keras 3 twins of
:mod:`hvdkit.training.torch_models` (same layers and widths), channels last.

``input_shape`` is the dataset's channels-first shape (as
:mod:`hvdkit.training.data` gives it); the models take channels-last images,
which is what TensorFlow's CPU kernels are fast on (see :func:`channels_last`);
1-D inputs ``(C, L)`` (``--dataset mnist1d``) likewise become ``(L, C)``, and
``cnn`` is then the MNIST-1D paper's 1-D conv net (:func:`cnn1d`).
Batch normalisation uses torch's constants (momentum 0.1 there is 0.9 here,
epsilon 1e-5) so both frameworks train the same network.
"""
import math

import keras
from keras import layers

BN = {"momentum": 0.9, "epsilon": 1e-5}


def channels_last(shape):
    """(C, H, W) -> (H, W, C) and (C, L) -> (L, C); other ranks unchanged."""
    return (*shape[1:], shape[0]) if len(shape) in (2, 3) else tuple(shape)


def mlp(input_shape, num_classes):
    return keras.Sequential([
        keras.Input(channels_last(input_shape)), layers.Flatten(),
        layers.Dense(128, activation="relu"), layers.Dense(64, activation="relu"), layers.Dense(num_classes),
    ], name="mlp")


# As torch_models (not imported: the TensorFlow job never imports torch): 25 channels; (kernel, stride,
# padding) of each convolution.
CNN1D_CHANNELS = 25
CNN1D_CONVS = ((5, 2, 1), (3, 2, 1), (3, 2, 1))


def cnn1d(input_shape, num_classes):
    """The MNIST-1D paper's CNN, as ``torch_models.cnn1d`` (5,210 parameters on length 40, 10 classes).
    Keras has no numeric padding for Conv1D: ``ZeroPadding1D`` then a ``valid`` convolution gives
    torch's ``padding=p`` output lengths exactly."""
    stack = [keras.Input(channels_last(input_shape))]
    for kernel, stride, padding in CNN1D_CONVS:
        stack += [layers.ZeroPadding1D(padding),
                  layers.Conv1D(CNN1D_CHANNELS, kernel, stride, padding="valid", activation="relu")]
    return keras.Sequential(stack + [layers.Flatten(), layers.Dense(num_classes)], name="cnn1d")


def cnn(input_shape, num_classes):
    """A small 2-D conv net for images; for 1-D inputs ``(C, L)``, the MNIST-1D CNN (:func:`cnn1d`)."""
    if len(input_shape) == 2:
        return cnn1d(input_shape, num_classes)
    return keras.Sequential([
        keras.Input(channels_last(input_shape)),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.Conv2D(64, 3, padding="same", activation="relu"), layers.MaxPooling2D(2),
        layers.AdaptiveAveragePooling2D(2), layers.Flatten(),
        layers.Dense(128, activation="relu"), layers.Dense(num_classes),
    ], name="cnn")


def _conv_bn(x, filters, kernel, stride, name):
    x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    return layers.BatchNormalization(name=f"{name}_bn", **BN)(x)


def _basic_block(x, filters, stride, name):
    out = layers.ReLU()(_conv_bn(x, filters, 3, stride, f"{name}_1"))
    out = _conv_bn(out, filters, 3, 1, f"{name}_2")
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, stride, f"{name}_down")
    return layers.ReLU()(layers.Add()([out, shortcut]))


def resnet18(input_shape, num_classes):
    """ResNet-18 with a 3x3 stem for small images, block layout as He et al.
    (and as ``torch_models.ResNet18``: 11.2 M parameters at 10 classes)."""
    inputs = keras.Input(channels_last(input_shape))
    x = layers.ReLU()(_conv_bn(inputs, 64, 3, 1, "stem"))
    for stage, (filters, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), start=1):
        x = _basic_block(x, filters, stride, f"stage{stage}_block1")
        x = _basic_block(x, filters, 1, f"stage{stage}_block2")
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(num_classes)(x), name="resnet18")


MODELS = {"mlp": mlp, "cnn": cnn, "resnet18": resnet18}


def build(name, input_shape, num_classes):
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if name == "resnet18" and len(input_shape) != 3:
        raise ValueError(f"resnet18 takes (C, H, W) images, not samples of shape {tuple(input_shape)}")
    return MODELS[name](tuple(input_shape), num_classes)


def parameter_count(model):
    return sum(math.prod(v.shape) for v in model.trainable_variables)
