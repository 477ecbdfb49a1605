"""Entry point: ``accelerate launch train.py [options]`` (or ``python train.py``); ``resnet-ocp train`` is the same."""

from resnet_ocp.cli import train

if __name__ == "__main__":
    train()
