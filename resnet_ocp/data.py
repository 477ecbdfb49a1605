"""CIFAR-10 through Hugging Face ``datasets``, decoded once into cached uint8 tensors.

A source is a Hub id (``uoft-cs/cifar10``), a directory in the Hub's parquet layout (such as
``../shared/data/cifar10``) or a ``save_to_disk`` directory. Decoding 60,000 PNGs costs about
6 s of one core; the decoded tensors are cached as safetensors keyed by the dataset's
fingerprint, so a second run reads them in well under a second.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from resnet_ocp.atomic import atomic_path
from resnet_ocp.errors import UserError

IMAGE_COLUMN = "img"
LABEL_COLUMN = "label"
SPLITS = ("train", "test")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Training-split statistics of the real CIFAR-10 (as fractions of 255); the data README lists them.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class DataError(UserError):
    """The data could not be loaded; the message is one line saying what to do."""


@dataclass(frozen=True)
class Split:
    """One split as tensors: ``images`` uint8 [N, 3, 32, 32] and ``labels`` int64 [N]."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> Split:
        """The rows at ``indices``, in that order."""
        return Split(self.images[indices], self.labels[indices])


@dataclass(frozen=True)
class Cifar:
    """Both splits and the class names (from the dataset's ClassLabel feature)."""

    train: Split
    test: Split
    classes: list[str]


def load_cifar(
    source: str,
    cache_dir: str | None = None,
    train_samples: int | None = None,
    test_samples: int | None = None,
) -> Cifar:
    """Load CIFAR-10-shaped data as uint8 tensors, decoding at most once per dataset version.

    Args:
        source: Hub dataset id, parquet-layout directory or ``save_to_disk`` directory.
        cache_dir: where decoded tensors are cached (default ``~/.cache/resnet_ocp``).
        train_samples: if given, a fixed class-balanced training subset of this size.
        test_samples: if given, a fixed class-balanced test subset of this size.
    """
    dsd = _open(source)
    cache = Path(cache_dir or Path.home() / ".cache" / "resnet_ocp")
    splits, classes = {}, []
    for name in SPLITS:
        split, classes = _decoded(dsd[name], cache, source)
        splits[name] = split
    for name, n in (("train", train_samples), ("test", test_samples)):
        if n is not None:
            splits[name] = splits[name].subset(balanced_subset(splits[name].labels, n, len(classes), name))
    return Cifar(splits["train"], splits["test"], classes)


def balanced_subset(labels: torch.Tensor, n: int, num_classes: int, split: str = "train") -> torch.Tensor:
    """Indices of a fixed class-balanced subset: the first ``n // C`` rows of each class.

    The first ``n % C`` classes get one more row. Indices come back in original order, so the
    same ``n`` always selects the same images.

    Args:
        labels: int64 labels of the full split.
        n: subset size.
        num_classes: number of classes C.
        split: split name, for the error message.
    """
    if n > len(labels):
        raise DataError(f"--{split}-samples {n} exceeds the {len(labels)} images in the {split} split; use at most {len(labels)}")
    chosen = []
    for c in range(num_classes):
        want = n // num_classes + (1 if c < n % num_classes else 0)
        rows = torch.nonzero(labels == c).flatten()[:want]
        if len(rows) < want:
            raise DataError(f"class {c} has only {len(rows)} {split} images, fewer than the {want} that --{split}-samples {n} needs")
        chosen.append(rows)
    return torch.cat(chosen).sort().values


def _open(source: str):
    """Open ``source`` as a DatasetDict with train and test splits, or raise one clear DataError."""
    import datasets

    path = Path(source).expanduser()
    looks_like_path = source.startswith((".", "/", "~")) or source.count("/") != 1
    # A local dataset's README.md without Hub metadata makes huggingface_hub warn "Repo card
    # metadata block was not found" on every load: nothing the user can act on.
    card_log = logging.getLogger("huggingface_hub.repocard")
    card_level = card_log.level
    card_log.setLevel(logging.ERROR)
    try:
        if path.is_dir() and (path / "dataset_dict.json").exists():
            dsd = datasets.load_from_disk(str(path))
        elif path.is_dir():
            dsd = datasets.load_dataset(str(path))
        elif path.exists():
            raise DataError(f"--data {source} is a file; give the directory that holds plain_text/*.parquet or a save_to_disk directory")
        elif looks_like_path:
            raise DataError(f"--data {source}: no such directory; give a CIFAR-10 parquet directory (e.g. ../shared/data/cifar10) or a Hub id")
        else:
            dsd = datasets.load_dataset(source)
    except DataError:
        raise
    except Exception as exc:  # datasets raises many types (offline, not found, bad files)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if path.is_dir():
            raise DataError(f"could not load --data {source} as a dataset: {first[:200]}; give a directory in the uoft-cs/cifar10 "
                            "parquet layout (plain_text/train-*.parquet and test-*.parquet) or a save_to_disk directory") from exc
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        hint = " (the Hub is offline here: HF_HUB_OFFLINE=1)" if offline else ""
        raise DataError(
            f"could not load --data {source}{hint}: {first[:200]}; pass a local copy, e.g. --data ../shared/data/cifar10"
        ) from exc
    finally:
        card_log.setLevel(card_level)
    missing = [s for s in SPLITS if s not in dsd]
    if missing:
        raise DataError(f"--data {source} has splits {sorted(dsd)}, but needs 'train' and 'test'")
    for name in SPLITS:
        _check_schema(dsd[name], source, name)
    return dsd


def _check_schema(ds, source: str, split: str) -> None:
    import datasets

    feats = ds.features
    ok = (
        isinstance(feats.get(IMAGE_COLUMN), datasets.Image)
        and isinstance(feats.get(LABEL_COLUMN), datasets.ClassLabel)
    )
    if not ok:
        found = {k: type(v).__name__ for k, v in feats.items()}
        raise DataError(
            f"--data {source} split {split!r} has columns {found}; expected 'img' (Image) and 'label' (ClassLabel) as in uoft-cs/cifar10"
        )
    names = list(feats[LABEL_COLUMN].names)
    if names != list(CIFAR10_CLASSES):
        raise DataError(f"--data {source} split {split!r} has label names {names[:12]}; expected CIFAR-10's {', '.join(CIFAR10_CLASSES)}")
    if len(ds) == 0:
        raise DataError(f"--data {source}: the {split} split is empty; give a dataset with images in both splits")


def _decoded(ds, cache: Path, source: str) -> tuple[Split, list[str]]:
    """Decode a split to uint8 tensors, or read them from the cache written by an earlier run."""
    file = cache / f"cifar-{ds._fingerprint}.safetensors"
    if file.exists():
        try:
            tensors = load_file(str(file))
            with open(file.with_suffix(".json")) as f:
                classes = json.load(f)["classes"]
            if tensors["images"].shape[0] == len(ds) == tensors["labels"].shape[0]:
                return Split(tensors["images"], tensors["labels"]), classes
        except Exception as exc:  # a damaged cache is rebuilt, never used
            print(f"decoded-image cache {file} is unreadable ({type(exc).__name__}); decoding the data again", file=sys.stderr)
        file.unlink(missing_ok=True)
    import datasets
    from PIL import Image

    classes = list(ds.features[LABEL_COLUMN].names)
    raw = ds.cast_column(IMAGE_COLUMN, datasets.Image(decode=False))
    images = np.empty((len(ds), 32, 32, 3), dtype=np.uint8)
    labels = np.asarray(ds[LABEL_COLUMN], dtype=np.int64)
    outside = np.flatnonzero((labels < 0) | (labels >= len(classes)))
    if len(outside):
        raise DataError(f"--data {source}: label {labels[outside[0]]} of row {outside[0]} is outside 0..{len(classes) - 1} "
                        f"({len(outside)} such rows); fix the dataset's labels")
    row = 0
    for batch in raw.iter(batch_size=2000):
        for item in batch[IMAGE_COLUMN]:
            with Image.open(io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]) as img:
                if img.mode != "RGB":
                    raise DataError(f"--data {source}: image {row} is in mode {img.mode}, expected RGB as in CIFAR-10")
                if img.size != (32, 32):
                    raise DataError(f"--data {source}: image {row} is {img.size[0]}x{img.size[1]}, expected 32x32 as in CIFAR-10")
                images[row] = np.asarray(img)
            row += 1
    split = Split(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels))
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_path(file.with_suffix(".json")) as tmp:
        Path(tmp).write_text(json.dumps({"classes": classes, "source": source, "rows": len(split)}))
    with atomic_path(file) as tmp:
        save_file({"images": split.images, "labels": split.labels}, tmp)
    return split, classes


class IndexDataset(torch.utils.data.Dataset):
    """Yields sample indices only: the images stay resident on the training device as uint8 and
    are gathered there, so the loader moves 8 bytes per image instead of 3,072."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class EpochSampler(torch.utils.data.Sampler[int]):
    """A shuffle that is a pure function of (seed, epoch), set through ``set_epoch``.

    Accelerate's prepared loader forwards ``set_epoch`` here. Not drawing from the global RNG
    is what makes resumed runs bit-identical: the DataLoader itself draws a base seed from the
    global generator on every ``iter()``, which Accelerate's saved RNG state does not undo.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration yields.

        Args:
            epoch: the epoch (any integer; each gives an independent permutation).
        """
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        from resnet_ocp.augment import SHUFFLE_STREAM, derived_seed

        g = torch.Generator().manual_seed(derived_seed(self.seed, self.epoch, SHUFFLE_STREAM))
        return iter(torch.randperm(self.n, generator=g).tolist())


def make_loaders(n_train: int, n_test: int, per_process_batch: int, eval_batch: int, seed: int):
    """Index loaders for training (shuffled per epoch, last batch kept) and test (in order).

    Args:
        n_train: training samples.
        n_test: test samples.
        per_process_batch: micro-batch of one process (global batch / processes / accumulation).
        eval_batch: per-process evaluation batch.
        seed: shuffling seed.
    """
    train = torch.utils.data.DataLoader(IndexDataset(n_train), batch_size=per_process_batch, sampler=EpochSampler(n_train, seed))
    test = torch.utils.data.DataLoader(IndexDataset(n_test), batch_size=eval_batch, shuffle=False)
    return train, test
