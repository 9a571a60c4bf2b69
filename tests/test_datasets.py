"""Data set loaders: the real Fashion-MNIST and digits, every user format, every error."""

from __future__ import annotations

import gzip
import importlib.util
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bitfleet import datasets
from bitfleet.datasets import Dataset, load_dataset, split_validation
from bitfleet.errors import ConfigError, DataError

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.float32): 0x0D}


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, IDX_CODES[array.dtype], array.ndim])
    sizes = struct.pack(f">{array.ndim}i", *array.shape)
    return header + sizes + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_mnist_dir(directory: Path, suffix: str = "") -> dict[str, np.ndarray]:
    """Four tiny MNIST-named IDX files; returns the arrays written."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (12, 4, 4), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(12, dtype=np.uint8) % 3,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (5, 4, 4), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(5, dtype=np.uint8) % 3,
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(directory / (name + suffix), array)
    return arrays


def save_npz(tmp_path: Path, **arrays: Any) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def fashion() -> Dataset:
    return load_dataset("fashion-mnist")


def test_fashion_mnist_shapes_and_types(fashion: Dataset) -> None:
    assert fashion.x_train.shape == (60000, 784) and fashion.x_train.dtype == np.uint8
    assert fashion.x_test.shape == (10000, 784) and fashion.x_test.dtype == np.uint8
    assert fashion.y_train.dtype == np.int64 and fashion.y_test.dtype == np.int64
    assert fashion.num_classes == 10 and fashion.num_features == 784
    assert np.bincount(fashion.y_train).tolist() == [6000] * 10
    assert np.bincount(fashion.y_test).tolist() == [1000] * 10


def test_fashion_mnist_override_by_argument_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arrays = write_mnist_dir(tmp_path / "plain")  # un-gzipped files are accepted too
    by_argument = load_dataset("fashion-mnist", data_dir=tmp_path / "plain")
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path / "plain"))
    by_environment = load_dataset("fashion-mnist")
    for loaded in (by_argument, by_environment):
        assert loaded.x_train.shape == (12, 16) and loaded.num_classes == 3
        np.testing.assert_array_equal(
            loaded.x_test, arrays["t10k-images-idx3-ubyte"].reshape(5, 16)
        )


def test_fashion_mnist_missing_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DataError) as error:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    message = str(error.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--data-dir" in message and datasets.DATA_DIR_ENV in message


def test_unknown_domain_shift_is_rejected_clearly() -> None:
    with pytest.raises(DataError, match=r"unknown shift 'rotate'; use one of rotate<degrees>"):
        load_dataset("fashion-mnist:rotate")


def test_unknown_spec_lists_what_is_accepted() -> None:
    with pytest.raises(DataError) as error:
        load_dataset("mnist")
    assert all(word in str(error.value) for word in ("fashion-mnist", "digits", ".npz", ".csv"))


def test_digits_from_the_scikit_learn_wheel() -> None:
    digits = load_dataset("digits")
    assert digits.x_train.shape == (1438, 64) and digits.x_test.shape == (359, 64)
    assert digits.num_classes == 10 and digits.x_train.dtype == np.uint8
    assert digits.x_train.max() == 255  # 16 * 255 // 16
    again = load_dataset("digits")
    np.testing.assert_array_equal(digits.y_test, again.y_test)  # fixed holdout seed


def test_digits_without_scikit_learn_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install --no-deps scikit-learn"):
        load_dataset("digits")


def test_npz_with_test_split_flattens_and_casts(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (10, 3, 2))
    x_test = rng.integers(0, 256, (4, 3, 2))
    path = save_npz(tmp_path, X=x, y=np.arange(10) % 4, X_test=x_test, y_test=[0.0, 1.0, 2.0, 5.0])
    loaded = load_dataset(str(path))
    np.testing.assert_array_equal(loaded.x_train, x.reshape(10, 6))
    np.testing.assert_array_equal(loaded.x_test, x_test.reshape(4, 6))
    assert loaded.x_train.dtype == np.uint8 and loaded.y_test.tolist() == [0, 1, 2, 5]
    assert loaded.num_classes == 6  # largest label over train and test, plus one


def test_npz_without_test_split_holds_out_a_fifth(tmp_path: Path) -> None:
    x = np.arange(50, dtype=np.uint8).reshape(50, 1)
    loaded = load_dataset(str(save_npz(tmp_path, X=x, y=np.zeros(50, dtype=int))))
    assert len(loaded.x_train) == 40 and len(loaded.x_test) == 10
    rows = np.concatenate([loaded.x_train, loaded.x_test]).ravel()
    assert sorted(rows.tolist()) == list(range(50))
    np.testing.assert_array_equal(loaded.x_test, load_dataset(str(tmp_path / "data.npz")).x_test)


def test_float_features_quantized_with_training_range(tmp_path: Path) -> None:
    x = np.array([[-1.0, 0.0], [1.0, 0.5]])
    x_test = np.array([[-3.0, 2.0], [0.0, 1.0]])
    path = save_npz(tmp_path, X=x, y=[0, 1], X_test=x_test, y_test=[0, 1])
    loaded = load_dataset(str(path))
    assert loaded.x_train.tolist() == [[0, 128], [255, 191]]
    assert loaded.x_test.tolist() == [[0, 255], [128, 255]]  # clipped outside the train range


def test_whole_float_features_within_byte_range_are_cast(tmp_path: Path) -> None:
    x = np.array([[0.0, 7.0], [200.0, 3.0]])
    loaded = load_dataset(str(save_npz(tmp_path, X=x, y=[0, 1], X_test=x, y_test=[1, 0])))
    assert loaded.x_train.tolist() == [[0, 7], [200, 3]]


def test_csv_with_header_and_named_label_column(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("label,a,b\n" + "".join(f"{i % 2},{i},{2 * i}\n" for i in range(10)))
    loaded = load_dataset(str(path), label_column="label")
    assert loaded.num_features == 2 and loaded.num_classes == 2
    assert len(loaded.x_train) == 8 and len(loaded.x_test) == 2
    assert all(row[1] == 2 * row[0] for row in loaded.x_train.tolist())
    by_index = load_dataset(str(path), label_column=0)
    np.testing.assert_array_equal(by_index.x_train, loaded.x_train)


def test_csv_without_header_takes_last_column_as_label(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("".join(f"{i},{i + 1},{i % 3}\n" for i in range(20)))
    loaded = load_dataset(str(path))
    assert loaded.num_features == 2 and loaded.num_classes == 3
    assert len(loaded.x_train) + len(loaded.x_test) == 20


def test_idx_images_file_finds_its_labels(tmp_path: Path) -> None:
    images = np.arange(40, dtype=np.float32).reshape(10, 2, 2)
    path = write_idx(tmp_path / "my-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "my-labels-idx1-ubyte.gz", np.arange(10, dtype=np.uint8) % 2)
    loaded = load_dataset(str(path))
    assert loaded.num_features == 4 and len(loaded.x_train) == 8
    assert loaded.x_train.dtype == np.uint8  # float32 IDX values 0..39 are byte-valued


def test_idx_directory_of_gzipped_files(tmp_path: Path) -> None:
    arrays = write_mnist_dir(tmp_path, ".gz")
    loaded = load_dataset(str(tmp_path))
    np.testing.assert_array_equal(loaded.x_train, arrays["train-images-idx3-ubyte"].reshape(12, 16))
    assert loaded.y_test.tolist() == [0, 1, 2, 0, 1]


def test_whole_file_makes_a_file_without_a_test_split_its_own_test_split(
    tmp_path: Path,
) -> None:
    csv = tmp_path / "data.csv"
    csv.write_text("".join(f"{i},{i % 3}\n" for i in range(20)))
    images = write_idx(tmp_path / "my-images-idx3-ubyte", np.zeros((40, 2, 2), np.uint8))
    write_idx(tmp_path / "my-labels-idx1-ubyte", np.arange(40, dtype=np.uint8) % 2)
    x = np.arange(30, dtype=np.uint8).reshape(30, 1)
    npz = save_npz(tmp_path, X=x, y=np.arange(30) % 2)
    for path, count in ((csv, 20), (images, 40), (npz, 30)):
        assert load_dataset(str(path)).test_split == "held-out"
        whole = load_dataset(str(path), whole_file=True)
        assert whole.test_split == "whole" and len(whole.y_test) == count
        np.testing.assert_array_equal(whole.x_test, whole.x_train)
    np.testing.assert_array_equal(load_dataset(str(npz), whole_file=True).x_test, x)


def test_whole_file_keeps_a_given_or_built_in_test_split(tmp_path: Path) -> None:
    write_mnist_dir(tmp_path / "idx")
    npz = save_npz(
        tmp_path, X=np.zeros((6, 2)), y=[0, 1] * 3, X_test=np.ones((2, 2)), y_test=[0, 1]
    )
    for spec in (str(tmp_path / "idx"), str(npz)):
        loaded = load_dataset(spec, whole_file=True)
        assert loaded.test_split == "test"
        assert len(loaded.y_test) == len(load_dataset(spec).y_test)
    digits = load_dataset("digits", whole_file=True)
    assert digits.test_split == "held-out" and len(digits.y_test) == 359
    assert load_dataset("digits:invert").test_split == "held-out"


NPZ_ERRORS: dict[str, tuple[dict[str, Any], str]] = {
    "mismatched lengths": ({"X": np.zeros((5, 3)), "y": np.zeros(4)}, "5 samples but 4 labels"),
    "fractional labels": ({"X": np.zeros((3, 2)), "y": [0, 0.5, 1]}, "whole numbers"),
    "text labels": ({"X": np.zeros((2, 2)), "y": ["cat", "dog"]}, "whole numbers"),
    "negative labels": ({"X": np.zeros((3, 2)), "y": [0, -1, 1]}, "0 or greater"),
    "2-D labels": ({"X": np.zeros((3, 2)), "y": np.zeros((3, 1))}, "1-D"),
    "1-D features": ({"X": np.zeros(3), "y": np.zeros(3)}, "one row per sample"),
    "text features": ({"X": np.array([["a"], ["b"]]), "y": [0, 1]}, "must be numbers"),
    "empty": ({"X": np.zeros((0, 3)), "y": np.zeros(0)}, "empty"),
    "no features": ({"X": np.zeros((3, 0)), "y": np.zeros(3)}, "empty"),
    "NaN features": ({"X": [[0.0, np.nan]], "y": [0]}, "NaN or infinite"),
    "inf features": ({"X": [[0.0, np.inf]], "y": [0]}, "NaN or infinite"),
    "test features differ": (
        {"X": np.zeros((3, 2)), "y": [0, 1, 2], "X_test": np.zeros((1, 5)), "y_test": [0]},
        "test samples have 5 features but training samples have 2",
    ),
    "X_test without y_test": (
        {"X": np.zeros((3, 2)), "y": [0, 1, 2], "X_test": np.zeros((1, 2))},
        "both X_test and y_test",
    ),
    "missing y": ({"X": np.zeros((3, 2)), "labels": [0, 1, 2]}, "it needs X and y"),
    "one sample, no test": ({"X": np.zeros((1, 2)), "y": [0]}, "cannot hold out a test split"),
}


@pytest.mark.parametrize(("arrays", "message"), NPZ_ERRORS.values(), ids=NPZ_ERRORS.keys())
def test_npz_errors_are_clear(tmp_path: Path, arrays: dict[str, Any], message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_dataset(str(save_npz(tmp_path, **arrays)))


GOOD_IDX = idx_bytes(np.zeros((3, 2, 2), dtype=np.uint8))
FILE_ERRORS: dict[str, tuple[str, bytes, str]] = {
    "unknown extension": ("data.txt", b"1,2\n", "cannot tell the format of .*data.txt.*\\.npz"),
    "npz not a zip": ("data.npz", b"garbage", "cannot read .* as .npz: it is not a zip archive"),
    "csv text cell": ("data.csv", b"a,b\n1,2\n3,x\n", "cannot parse .* as CSV"),
    "csv ragged rows": ("data.csv", b"1,2,3\n4,5\n", "cannot parse .* as CSV"),
    "csv header width": ("data.csv", b"a,b\n1,2,3\n", "header names 2 columns but rows have 3"),
    "csv without rows": ("data.csv", b"a,b\n", "empty"),
    "csv not text": ("data.csv", b"\xff\xfe\x00\x81", "cannot parse"),
    "idx bad magic": ("x-images-idx3-ubyte", b"\x1f\x8b" + GOOD_IDX[2:], "bad magic number"),
    "idx truncated": ("x-images-idx3-ubyte", GOOD_IDX[:-1], "truncated or corrupted"),
    "idx extra bytes": ("x-images-idx3-ubyte", GOOD_IDX + b"\0", "truncated or corrupted"),
    "idx header cut": ("x-images-idx3-ubyte", GOOD_IDX[:9], "ends inside its header"),
    "gzip truncated": ("x-images-idx3-ubyte.gz", gzip.compress(GOOD_IDX)[:-12], "cannot read"),
    "gzip garbage": ("x-images-idx3-ubyte.gz", b"not gzip at all", "cannot read"),
}


@pytest.mark.parametrize(
    ("name", "content", "message"), FILE_ERRORS.values(), ids=FILE_ERRORS.keys()
)
def test_file_errors_are_clear(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    write_idx(tmp_path / name.replace("images", "labels"), np.zeros(3, dtype=np.uint8))
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_dataset(str(tmp_path / name))


def test_missing_file_is_reported() -> None:
    with pytest.raises(
        DataError, match=re.escape("'/no/such/data.npz' not found; use 'fashion-mnist'")
    ):
        load_dataset("/no/such/data.npz")


def test_idx_file_without_labels_next_to_it(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 2, 2), dtype=np.uint8))
    with pytest.raises(DataError, match="train-labels-idx3-ubyte or train-labels-idx1-ubyte"):
        load_dataset(str(path))


def test_idx_file_must_be_an_images_file(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3, dtype=np.uint8))
    with pytest.raises(DataError, match="'images' in its name"):
        load_dataset(str(path))


def test_idx_directory_missing_a_file(tmp_path: Path) -> None:
    write_mnist_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=re.escape("t10k-labels-idx1-ubyte[.gz] not found")):
        load_dataset(str(tmp_path))


@pytest.mark.parametrize(
    ("column", "message"),
    [("target", "no column named 'target'"), (5, "label column 5 does not exist")],
)
def test_csv_bad_label_column(tmp_path: Path, column: int | str, message: str) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,b\n1,0\n2,1\n")
    with pytest.raises(ConfigError, match=message):
        load_dataset(str(path), label_column=column)


def test_split_validation_takes_the_last_samples() -> None:
    x = np.arange(10, dtype=np.uint8).reshape(5, 2)
    y = np.arange(5, dtype=np.int64)
    x_fit, y_fit, x_val, y_val = split_validation(x, y, 2)
    assert y_fit.tolist() == [0, 1, 2] and y_val.tolist() == [3, 4]
    np.testing.assert_array_equal(np.concatenate([x_fit, x_val]), x)


@pytest.mark.parametrize("n_val", [5, 6, -1])
def test_split_validation_rejects_sizes_that_do_not_fit(n_val: int) -> None:
    with pytest.raises(ConfigError, match="choose a validation size between 0 and 4"):
        split_validation(np.zeros((5, 2), dtype=np.uint8), np.zeros(5, dtype=np.int64), n_val)
