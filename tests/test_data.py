"""Loading through `datasets`: the real schema, the cache, fixed balanced subsets and clear errors."""

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CLASSES, Schema, make_images, write_parquet_set
from resnet_ocp.data import DataError, balanced_subset, load_cifar


def test_loads_parquet_layout_as_uint8_tensors(tiny_data, cache_dir):
    """A parquet directory loads into uint8 NCHW images equal to the written pixels, int64
    labels, and class names from the ClassLabel feature."""
    data = load_cifar(str(tiny_data), str(cache_dir))
    assert data.classes == CLASSES
    assert data.train.images.shape == (200, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert data.test.images.shape == (100, 3, 32, 32) and data.test.labels.dtype == torch.int64
    expected = make_images(np.arange(200) % 10, 0)
    assert np.array_equal(data.train.images.permute(0, 2, 3, 1).numpy(), expected)
    assert data.train.labels[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_second_load_reads_the_cache_without_decoding(tiny_data, tmp_path, monkeypatch):
    """The first load writes a safetensors cache; the second never decodes a PNG."""
    first = load_cifar(str(tiny_data), str(tmp_path))
    assert len(list(tmp_path.glob("cifar-*.safetensors"))) == 2

    def no_decoding(*a, **k):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr("PIL.Image.open", no_decoding)
    second = load_cifar(str(tiny_data), str(tmp_path))
    assert torch.equal(first.train.images, second.train.images) and second.classes == CLASSES


def test_save_to_disk_directory_is_accepted(tmp_path, cache_dir):
    """A `save_to_disk` DatasetDict directory loads like the parquet layout."""
    import datasets

    src = write_parquet_set(tmp_path / "pq", n_train=20, n_test=10)
    dsd = datasets.load_dataset(str(src))
    dsd.save_to_disk(str(tmp_path / "saved"))
    data = load_cifar(str(tmp_path / "saved"), str(cache_dir))
    assert len(data.train) == 20 and len(data.test) == 10 and data.classes == CLASSES


def test_balanced_subset_is_fixed_and_balanced(tiny_data, cache_dir):
    """--train-samples N takes the first N/10 images of each class, in original order."""
    data = load_cifar(str(tiny_data), str(cache_dir), train_samples=50, test_samples=23)
    assert len(data.train) == 50 and len(data.test) == 23
    assert torch.bincount(data.train.labels, minlength=10).tolist() == [5] * 10
    assert torch.bincount(data.test.labels, minlength=10).tolist() == [3, 3, 3] + [2] * 7
    again = load_cifar(str(tiny_data), str(cache_dir), train_samples=50)
    assert torch.equal(data.train.images, again.train.images)
    labels = torch.tensor([1, 0, 1, 0, 2, 2, 1])
    assert balanced_subset(labels, 3, 3).tolist() == [0, 1, 4]


def test_missing_path_gives_one_clear_line(cache_dir):
    """A directory that does not exist names itself and suggests the local copy."""
    with pytest.raises(DataError) as err:
        load_cifar("./no/such/dir", str(cache_dir))
    msg = str(err.value)
    assert "no such directory" in msg and "../shared/data/cifar10" in msg and "\n" not in msg


def test_unreachable_hub_while_offline_says_so(cache_dir):
    """A Hub id that cannot be fetched offline says the Hub is offline and how to use a local copy."""
    with pytest.raises(DataError) as err:
        load_cifar("uoft-cs/cifar10-not-cached-here", str(cache_dir))
    msg = str(err.value)
    assert "offline" in msg and "--data ../shared/data/cifar10" in msg and "\n" not in msg


def test_wrong_schema_names_the_expected_columns(tmp_path, cache_dir):
    """Columns other than img (Image) / label (ClassLabel) are refused with what was expected."""
    bad = write_parquet_set(tmp_path / "bad", n_train=10, n_test=10, schema=Schema(columns=("image", "labels")))
    with pytest.raises(DataError) as err:
        load_cifar(str(bad), str(cache_dir))
    msg = str(err.value)
    assert "'img' (Image)" in msg and "'label' (ClassLabel)" in msg and "image" in msg


def test_subset_larger_than_the_split_is_refused(tiny_data, cache_dir):
    """Asking for more images than exist says how many there are."""
    with pytest.raises(DataError, match="at most 100"):
        load_cifar(str(tiny_data), str(cache_dir), test_samples=101)


def test_a_file_instead_of_a_directory_is_refused(tmp_path, cache_dir):
    """Pointing --data at a file asks for the directory instead."""
    f = Path(tmp_path / "x.parquet")
    f.write_text("")
    with pytest.raises(DataError, match="is a file"):
        load_cifar(str(f), str(cache_dir))
