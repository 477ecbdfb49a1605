"""resnet_ocp: a ResNet trained on CIFAR-10 with the One-Cycle policy through Hugging Face Accelerate."""

__version__ = "0.1.0"
