"""Shared fixtures: tiny CIFAR-shaped parquet sets in the real schema, and a finished tiny run.

The tiny set is learnable in a few steps (each class has its own colour, with noise), so
tests can assert learning well above chance in seconds.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

# Offline like the machines this project runs on; datasets' own cache goes to a temp dir.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="hf-datasets-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "cifar10"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [128, 128, 128], [20, 20, 20]])


def make_images(labels: np.ndarray, seed: int) -> np.ndarray:
    """uint8 [N, 32, 32, 3]: the class colour plus uniform noise of +-40."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(-40, 41, size=(len(labels), 32, 32, 3))
    return np.clip(PALETTE[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Schema:
    """How a written parquet set looks; each field other than its default breaks the real schema.

    ``columns`` renames the two columns, ``names`` gives other label names, ``first_label``
    replaces the first training label (e.g. -1, which ClassLabel admits as "missing"), ``size``
    and ``mode`` make other images.
    """

    columns: tuple[str, str] = ("img", "label")
    names: tuple[str, ...] = tuple(CLASSES)
    first_label: int | None = None
    size: int = 32
    mode: str = "RGB"


def write_parquet_set(root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0,
                      schema: Schema = Schema()) -> Path:
    """Write ``root/plain_text/{train,test}-00000-of-00001.parquet`` in uoft-cs/cifar10's schema.

    Args:
        root: the dataset directory to create.
        n_train, n_test: images per split; labels cycle 0..9 so every class is present.
        seed: seed of the training images' noise (the test split uses ``seed + 1``).
        schema: the columns, label names and images to write (the real ones by default).
    """
    import datasets
    from PIL import Image

    (root / "plain_text").mkdir(parents=True, exist_ok=True)
    features = datasets.Features({schema.columns[0]: datasets.Image(),
                                  schema.columns[1]: datasets.ClassLabel(names=list(schema.names))})
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        labels = np.arange(n) % 10
        images = make_images(labels, s)
        pictures = [Image.fromarray(a).resize((schema.size, schema.size)).convert(schema.mode) for a in images]
        values = labels.tolist()
        if split == "train" and schema.first_label is not None:
            values[0] = schema.first_label
        ds = datasets.Dataset.from_dict({schema.columns[0]: pictures, schema.columns[1]: values}, features=features)
        ds.to_parquet(str(root / "plain_text" / f"{split}-00000-of-00001.parquet"))
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A learnable 200/100-image parquet set in the real schema."""
    return write_parquet_set(tmp_path_factory.mktemp("tiny") / "cifar10")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def reset_accelerate() -> None:
    """Forget Accelerate's process-wide singletons so the next in-process run starts afresh."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Every test starts and ends without Accelerate state left by another."""
    yield
    reset_accelerate()


TINY_MAX_LR = 0.02
# A range test that fits the tiny set: 30 steps up to 0.5, where its loss is still falling.
TINY_RANGE_TEST = ("--lr-find-iters", "30", "--lr-find-end", "0.5")


def tiny_args(data: Path, cache: Path, out: Path, *extra: str, max_lr: float | None = TINY_MAX_LR) -> list[str]:
    """CLI arguments of a fast run on the tiny set: narrow network, small batches, 2 epochs.

    ``max_lr=None`` leaves the peak LR to the LR range test.
    """
    return [
        "--data", str(data), "--cache-dir", str(cache), "--output-dir", str(out), "--width", "8",
        "--batch-size", "20", "--eval-batch-size", "32", "--epochs", "2", "--peak-epoch", "1",
        *(["--max-lr", str(max_lr)] if max_lr is not None else []), "--no-progress", *extra,
    ]


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: str, argv: list[str], env_extra: dict | None = None, timeout: int = 300,
           module: str | None = None) -> subprocess.CompletedProcess:
    """``accelerate launch --config_file accelerate_configs/<config> train.py <argv>`` as a real
    subprocess, on a free rendezvous port, returning its exit status and output; with ``module``,
    ``accelerate launch ... -m <module> <argv>`` (Accelerate's --module) instead of train.py."""
    env = {**os.environ, **(env_extra or {})}
    script = ["-m", module] if module else [str(REPO / "train.py")]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "accelerate_configs" / config),
           "--main_process_port", str(free_port()), *script, *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


@pytest.fixture(scope="session")
def finished_run(tiny_data, cache_dir, tmp_path_factory) -> dict:
    """One finished 1-process tiny run (with the LR range test), shared by read-only tests."""
    from resnet_ocp.cli import main

    out = tmp_path_factory.mktemp("runs") / "finished"
    result = main(tiny_args(tiny_data, cache_dir, out, *TINY_RANGE_TEST, max_lr=None))
    reset_accelerate()
    return result
