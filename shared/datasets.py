"""Offline data set loaders: built-in data sets and the user's own files, never a download.

Every source ends in :func:`_assemble`, so all formats share one set of checks and one
conversion to uint8 features and int64 labels, and every problem is a :class:`DataError`
that says how to fix it instead of a numpy traceback.

Conversions, identical for every source:

* features of more than one dimension per sample (e.g. 28x28 images) are flattened;
* byte-valued features (integers, or whole-number floats, within 0..255) are cast to uint8;
  anything else is mapped linearly onto 0..255 using the min and max of the *training*
  split only (one global range, so images keep their relative contrast), and test values
  outside that range are clipped;
* labels must be whole numbers in 0..MAX_CLASSES-1; ``num_classes`` is the largest label
  + 1 (models, histograms and one-hot targets are sized by it, so a stray label of 10^9
  would allocate gigabytes: :data:`MAX_CLASSES` bounds it);
* sources without a test split (digits, a single IDX file, an .npz or CSV without test
  data) hold out :data:`HOLDOUT_FRACTION` of their samples, chosen by a permutation seeded
  with :data:`HOLDOUT_SEED`, so the split is the same on every machine and every run;
  loaded with ``whole_file=True`` (what ``bitfleet eval`` scores), a user's file without
  a test split is its own test split instead, every sample of it.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import os
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np
from numpy.typing import NDArray

from bitfleet.errors import ConfigError, DataError
from bitfleet.shifts import Shift, parse_shift

BUILTIN_DATASETS = ("fashion-mnist", "digits")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DATA_DIR_ENV = "BITFLEET_DATA_DIR"
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
HOLDOUT_FRACTION = 0.2
HOLDOUT_SEED = 20240607
MAX_CLASSES = 4096  # labels are 0..MAX_CLASSES-1 (see the module docstring)
ACCEPTED_SPECS = (
    "'fashion-mnist', 'digits' (either with a shift such as ':rotate30'), or a path to an "
    ".npz file (X, y, optional X_test, y_test), a .csv file, an IDX images file (optionally "
    ".gz) or a directory holding the four MNIST-named IDX files"
)
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, zipfile.BadZipFile)

RawPair = tuple[NDArray[Any], NDArray[Any]]
# Where a Dataset's test split comes from: the source's own test data, HOLDOUT_FRACTION held
# out of its samples, or (whole_file=True) every sample, the training split then the same.
TestSplit = Literal["test", "held-out", "whole"]


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split with flattened uint8 features and int64 labels 0..C-1."""

    name: str
    x_train: NDArray[np.uint8]
    y_train: NDArray[np.int64]
    x_test: NDArray[np.uint8]
    y_test: NDArray[np.int64]
    num_classes: int
    test_split: TestSplit = "test"

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])


def load_dataset(
    spec: str,
    data_dir: str | Path | None = None,
    label_column: int | str = -1,
    *,
    whole_file: bool = False,
) -> Dataset:
    """Load a built-in data set by name, or the user's own file, from local disk only.

    A built-in name may carry a domain shift, ``NAME:SHIFT`` (e.g. ``fashion-mnist:rotate30``,
    see :mod:`bitfleet.shifts`). ``data_dir`` overrides where Fashion-MNIST is looked for;
    ``label_column`` (an index or a header name) picks the label column of a CSV file.
    ``whole_file`` makes a user's file without a test split its own test split (to score
    data the user brings, not to train on); built-in data sets keep their test splits.
    """
    name, colon, variant = spec.partition(":")
    if colon and name in BUILTIN_DATASETS:
        transform = parse_shift(variant)  # a bad name fails before any loading
        return _shifted(load_dataset(name, data_dir), spec, transform)
    if spec == "fashion-mnist":
        return _load_fashion_mnist(data_dir)
    if spec == "digits":
        return _load_digits()
    return _load_user_data(Path(spec), label_column, whole_file)


def _shifted(base: Dataset, spec: str, transform: Shift) -> Dataset:
    """A built-in data set under a domain shift, applied to both splits alike."""
    return Dataset(
        spec,
        transform(base.x_train),
        base.y_train,
        transform(base.x_test),
        base.y_test,
        base.num_classes,
        base.test_split,
    )


def split_validation(
    x: NDArray[np.uint8], y: NDArray[np.int64], n_val: int
) -> tuple[NDArray[np.uint8], NDArray[np.int64], NDArray[np.uint8], NDArray[np.int64]]:
    """Make the last ``n_val`` training samples a validation set, keeping the test set unseen."""
    if not 0 <= n_val < len(x):
        raise ConfigError(
            f"validation size {n_val} does not fit a training split of {len(x)} samples; "
            f"choose a validation size between 0 and {len(x) - 1}"
        )
    cut = len(x) - n_val
    return x[:cut], y[:cut], x[cut:], y[cut:]


MAX_VALIDATION = 5000  # the default validation tail's cap (10 % of the training split below it)


def carve_validation(
    x: NDArray[np.uint8], y: NDArray[np.int64], val_size: int | None
) -> tuple[
    NDArray[np.uint8], NDArray[np.int64], NDArray[np.uint8] | None, NDArray[np.int64] | None
]:
    """Split off the validation tail (default 10 %, at most 5,000; 0 means none)."""
    size = val_size if val_size is not None else min(MAX_VALIDATION, len(y) // 10)
    if size > 0:
        return split_validation(x, y, size)
    return x, y, None, None


def _load_fashion_mnist(data_dir: str | Path | None) -> Dataset:
    """Fashion-MNIST from the Debian package, or from an override directory."""
    directory = Path(data_dir or os.environ.get(DATA_DIR_ENV) or FASHION_MNIST_DIR)
    hint = (
        "install Fashion-MNIST with `sudo apt-get install dataset-fashion-mnist`, or point "
        f"--data-dir (or the {DATA_DIR_ENV} environment variable) at a directory holding "
        f"{', '.join(MNIST_FILES)} (each optionally .gz)"
    )
    return _load_idx_dir(directory, "fashion-mnist", hint)


def _load_digits() -> Dataset:
    """scikit-learn's 8x8 digits (values 0..16, scaled to 0..255), read from its wheel."""
    features, labels = _read_csv(_digits_path(), -1)
    return _assemble("digits", (features * 255 // 16).astype(np.uint8), labels, None)


def _digits_path() -> Path:
    """Locate digits.csv.gz without importing scikit-learn (slow, and heavy on a board)."""
    hint = "install it with `pip install --no-deps scikit-learn` (only its data file is read)"
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the digits data set ships with scikit-learn, which is missing; {hint}")
    locations = list(spec.submodule_search_locations)
    for location in locations:
        candidate = Path(location, "datasets", "data", "digits.csv.gz")
        if candidate.is_file():
            return candidate
    raise DataError(f"scikit-learn in {locations} lacks datasets/data/digits.csv.gz; re-{hint}")


def _load_user_data(path: Path, label_column: int | str, whole_file: bool) -> Dataset:
    """Pick the reader for the user's own data from the path's kind and name."""
    if not path.exists():
        raise DataError(f"data set {str(path)!r} not found; use {ACCEPTED_SPECS}")
    if path.is_dir():
        hint = f"a data directory must hold {', '.join(MNIST_FILES)} (each optionally .gz)"
        return _load_idx_dir(path, str(path), hint)
    lower = path.name.lower()
    if lower.endswith(".npz"):
        return _load_npz(path, whole_file)
    if lower.endswith((".csv", ".csv.gz")):
        features, labels = _read_csv(path, label_column)
        return _assemble(str(path), features, labels, None, whole_file)
    if "idx" in lower or "ubyte" in lower:
        return _load_idx_file(path, whole_file)
    raise DataError(f"cannot tell the format of {path} from its name; use {ACCEPTED_SPECS}")


def _find_idx(base: Path, hint: str) -> Path:
    """An IDX file stored plain or gzipped."""
    for candidate in (base, base.with_name(base.name + ".gz")):
        if candidate.is_file():
            return candidate
    raise DataError(f"{base}[.gz] not found; {hint}")


def _load_idx_dir(directory: Path, name: str, hint: str) -> Dataset:
    """The four MNIST-named IDX files of a directory: train and test images and labels."""
    x_train, y_train, x_test, y_test = (
        _read_idx(_find_idx(directory / f, hint)) for f in MNIST_FILES
    )
    return _assemble(name, x_train, y_train, (x_test, y_test))


def _load_idx_file(images: Path, whole_file: bool) -> Dataset:
    """An IDX images file whose labels file is named with 'labels' in place of 'images'."""
    if "images" not in images.name:
        raise DataError(
            f"{images}: an IDX file must be an images file with 'images' in its name (its "
            "labels file is found by replacing 'images' with 'labels'); or pass the directory "
            "holding the four MNIST-named IDX files"
        )
    labels_name = images.name.replace("images", "labels")
    candidates = dict.fromkeys(
        images.with_name(n) for n in (labels_name, labels_name.replace("idx3", "idx1"))
    )
    labels = next((c for c in candidates if c.is_file()), None)
    if labels is None:
        tried = " or ".join(c.name for c in candidates)
        raise DataError(f"labels for {images} not found: put them next to it as {tried}")
    return _assemble(str(images), _read_idx(images), _read_idx(labels), None, whole_file)


def _read_bytes(path: Path) -> bytearray:
    """A whole file, un-gzipped if it ends in .gz; a bytearray so arrays on it are writable."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path) as stream:
                return bytearray(stream.read())
        return bytearray(path.read_bytes())
    except _READ_ERRORS as error:
        raise DataError(f"cannot read {path}: {error}; re-download or re-extract it") from error


def _read_idx(path: Path) -> NDArray[Any]:
    """Decode an IDX file: magic (0, 0, type, ndim), big-endian int32 sizes, then the values."""
    buffer = _read_bytes(path)
    if len(buffer) < 4 or buffer[0] or buffer[1] or buffer[2] not in _IDX_DTYPES or not buffer[3]:
        raise DataError(
            f"{path} is not an IDX file (bad magic number {bytes(buffer[:4]).hex()}); "
            "check the path, or re-download the file"
        )
    dtype = np.dtype(_IDX_DTYPES[buffer[2]])
    offset = 4 + 4 * buffer[3]
    if len(buffer) < offset:
        raise DataError(f"{path} is truncated: it ends inside its header; re-download it")
    shape = tuple(int(size) for size in np.frombuffer(buffer, ">i4", buffer[3], 4))
    count = math.prod(shape)
    if min(shape) < 0 or len(buffer) != offset + count * dtype.itemsize:
        raise DataError(
            f"{path} is truncated or corrupted: its header declares shape {shape} "
            f"({offset + count * dtype.itemsize} bytes) but the file has {len(buffer)} bytes; "
            "re-download it"
        )
    values = np.frombuffer(buffer, dtype, count, offset).reshape(shape)
    return values.astype(dtype.newbyteorder("="), copy=False)


def _load_npz(path: Path, whole_file: bool) -> Dataset:
    """An .npz archive with X, y and optionally X_test, y_test."""
    arrays = _read_npz(path)
    missing = [key for key in ("X", "y") if key not in arrays]
    has_test = [key in arrays for key in ("X_test", "y_test")]
    if missing or any(has_test) != all(has_test):
        raise DataError(
            f"{path} holds arrays {sorted(arrays)}; it needs X and y, plus optionally both "
            "X_test and y_test: save it with numpy.savez(path, X=..., y=...)"
        )
    test = (arrays["X_test"], arrays["y_test"]) if all(has_test) else None
    return _assemble(str(path), arrays["X"], arrays["y"], test, whole_file)


def _read_npz(path: Path) -> dict[str, NDArray[Any]]:
    """Every array of an .npz archive, refusing pickled objects (they can run code)."""
    try:
        if not zipfile.is_zipfile(path):
            raise ValueError("it is not a zip archive")
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except _READ_ERRORS as error:
        raise DataError(
            f"cannot read {path} as .npz: {error}; save numeric arrays with "
            "numpy.savez(path, X=..., y=...)"
        ) from error


def _open_text(path: Path) -> TextIO:
    """CSV files may be gzipped, like the digits file inside scikit-learn."""
    return gzip.open(path, "rt") if path.suffix == ".gz" else path.open()


def _read_csv(path: Path, label_column: int | str) -> RawPair:
    """A numeric CSV with an optional header row, split into (features, labels)."""
    try:
        with _open_text(path) as stream:
            first = stream.readline()
        fields = [field.strip().strip("\"'") for field in first.split(",")]
        header = None if all(_is_number(f) for f in fields) else fields
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
            table = np.loadtxt(path, delimiter=",", skiprows=int(bool(header)), ndmin=2)
    except _READ_ERRORS as error:
        raise DataError(
            f"cannot parse {path} as CSV: {error}; write one sample per row as "
            "comma-separated numbers, with at most one header row"
        ) from error
    if header is not None and table.size and len(header) != table.shape[1]:
        raise DataError(
            f"{path}: the header names {len(header)} columns but rows have {table.shape[1]}; "
            "make the header match the data"
        )
    column = _label_index(path, label_column, header, table.shape[1])
    return np.delete(table, column, axis=1), table[:, column]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _label_index(path: Path, label_column: int | str, header: list[str] | None, width: int) -> int:
    """Resolve the label column given by header name or (possibly negative) index."""
    if isinstance(label_column, str):
        if header is None or label_column not in header:
            found = f"its columns are {header}" if header else "it has no header row"
            raise ConfigError(
                f"{path} has no column named {label_column!r} ({found}); "
                "pass the label column's header name or index"
            )
        return header.index(label_column)
    if not -width <= label_column < width:
        raise ConfigError(
            f"label column {label_column} does not exist in {path}, which has {width} "
            f"columns; pass an index from {-width} to {width - 1} or a header name"
        )
    return label_column % width


def _assemble(
    name: str,
    x_train: NDArray[Any],
    y_train: NDArray[Any],
    test: RawPair | None,
    whole_file: bool = False,
) -> Dataset:
    """Validate the raw arrays of any source and turn them into a uniform Dataset."""
    x_train, y_train = _checked_split(name, "training", x_train, y_train)
    split: TestSplit = "test"
    if test is not None:
        x_test, y_test = _checked_split(name, "test", *test)
    elif whole_file:
        x_test, y_test, split = x_train, y_train, "whole"
    else:
        x_train, y_train, x_test, y_test = _holdout(name, x_train, y_train)
        split = "held-out"
    if x_test.shape[1] != x_train.shape[1]:
        raise DataError(
            f"{name}: test samples have {x_test.shape[1]} features but training samples "
            f"have {x_train.shape[1]}; both splits must describe samples the same way"
        )
    x_train_u8, x_test_u8 = _to_uint8(x_train, x_test)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    return Dataset(name, x_train_u8, y_train, x_test_u8, y_test, num_classes, split)


def _checked_split(
    name: str, split: str, x: NDArray[Any], y: NDArray[Any]
) -> tuple[NDArray[Any], NDArray[np.int64]]:
    """Check one split's shapes and values; return flattened features and int64 labels."""
    x, y = np.asarray(x), np.asarray(y)
    where = f"{name}: {split}"
    if x.ndim < 2:
        raise DataError(
            f"{where} features have shape {x.shape}; they need one row per sample, "
            "shape (samples, features...)"
        )
    if y.ndim != 1:
        raise DataError(
            f"{where} labels have shape {y.shape}; they need one label per sample in a "
            "1-D array (e.g. y.ravel())"
        )
    if len(x) != len(y):
        raise DataError(
            f"{where} split has {len(x)} samples but {len(y)} labels; give exactly one "
            "label per sample"
        )
    flat = x.reshape(len(x), math.prod(x.shape[1:]))
    if flat.size == 0:
        raise DataError(f"{where} split is empty (shape {x.shape}); provide samples with features")
    _check_features(where, flat)
    return flat, _checked_labels(where, y)


def _check_features(where: str, x: NDArray[Any]) -> None:
    if x.dtype.kind not in "biuf":
        raise DataError(f"{where} features have type {x.dtype}; they must be numbers")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DataError(
            f"{where} features contain NaN or infinite values; drop or impute them first"
        )


def _checked_labels(where: str, y: NDArray[Any]) -> NDArray[np.int64]:
    """Labels are class indices: whole numbers (whole floats allowed) in 0..MAX_CLASSES-1."""
    is_whole = y.dtype.kind in "biu" or (
        y.dtype.kind == "f" and bool(np.isfinite(y).all()) and bool((y == np.round(y)).all())
    )
    if not is_whole:
        raise DataError(
            f"{where} labels must be whole numbers (class indices 0..C-1), got type "
            f"{y.dtype}; map each class to an integer first"
        )
    if y.min() < 0:
        raise DataError(
            f"{where} labels include {y.min()}; class indices must be 0 or greater, so shift "
            "or remap them"
        )
    if y.max() >= MAX_CLASSES:
        raise DataError(
            f"{where} labels include {y.max()}; class indices must be 0 to {MAX_CLASSES - 1} "
            f"(at most {MAX_CLASSES} classes), so remap the classes to 0..C-1"
        )
    return y.astype(np.int64)


def _holdout(
    name: str, x: NDArray[Any], y: NDArray[np.int64]
) -> tuple[NDArray[Any], NDArray[np.int64], NDArray[Any], NDArray[np.int64]]:
    """Hold out a seeded random test split for sources that ship without one."""
    if len(x) < 2:
        raise DataError(
            f"{name}: cannot hold out a test split from {len(x)} sample; provide more samples "
            "or a separate test split (X_test and y_test in an .npz file)"
        )
    n_test = min(len(x) - 1, max(1, round(len(x) * HOLDOUT_FRACTION)))
    order = np.random.default_rng(HOLDOUT_SEED).permutation(len(x))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def _to_uint8(
    x_train: NDArray[Any], x_test: NDArray[Any]
) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """Cast byte-valued features; otherwise map the training range linearly onto 0..255.

    The range comes from the training split alone so no test statistics leak into training;
    test values outside it are clipped.
    """
    if _is_byte_valued(x_train) and _is_byte_valued(x_test):
        return x_train.astype(np.uint8, copy=False), x_test.astype(np.uint8, copy=False)
    low, high = float(x_train.min()), float(x_train.max())
    scale = 255.0 / (high - low) if high > low else 0.0
    return _quantize(x_train, low, scale), _quantize(x_test, low, scale)


def _is_byte_valued(x: NDArray[Any]) -> bool:
    if x.dtype == np.uint8:
        return True
    in_range = bool(x.min() >= 0 and x.max() <= 255)
    return in_range and (x.dtype.kind != "f" or bool((x == np.round(x)).all()))


def _quantize(x: NDArray[Any], low: float, scale: float) -> NDArray[np.uint8]:
    return np.clip(np.rint((x - low) * scale), 0, 255).astype(np.uint8)
