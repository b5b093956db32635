"""Bundled models (``models``: MobileNetV1/V2, ResNet with Fashion-MNIST checkpoints) and
the offline Fashion-MNIST data set (``fashion_mnist``)."""
