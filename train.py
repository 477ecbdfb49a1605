"""Entry point: ``accelerate launch train.py [options]`` (or ``python train.py``)."""

from resnet_ocp.cli import main

if __name__ == "__main__":
    main()
