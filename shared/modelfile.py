"""Model files (``.bfm``): bit, fixed-point and float networks to and from frames and disk.

A frame that decodes is still hostile: each loader checks the model type, that the frame
holds exactly the tensors of its layers, every tensor's encoding and rank, that shapes
chain from the inputs to the scores, that float tensors are finite, and that a ``layers``
entry in ``meta`` matches. A model a loader returns can run ``predict``/``accuracy`` on
inputs of its width; anything else is a :class:`ModelFileError` saying what is wrong.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from bitfleet.bitmlp import BitMLP, PackedLayer
from bitfleet.bitpack import unpack_binary, unpack_ternary
from bitfleet.classifier import Classifier
from bitfleet.errors import ConfigError, ModelFileError
from bitfleet.fixedpoint import FixedLayer, FixedMLP
from bitfleet.floatmlp import FloatMLP
from bitfleet.frames import KIND_MODEL, Frame, Tensor, decode_frame, encode_frame, excerpt

MODEL_TYPE_BITMLP = "bitmlp"
MODEL_TYPE_FLOATMLP = "floatmlp"
MODEL_TYPE_FIXEDMLP = "fixedmlp"
Model = BitMLP | FloatMLP | FixedMLP
M = TypeVar("M", bound=Classifier[Any])


def bitmlp_weight_tensors(model: BitMLP) -> list[Tensor]:
    """The packed weights as ``dense_<i>`` tensors: what a model frame and an agent's update
    frame both carry (planes: the sign bits, then the nonzero bits of a ternary layer)."""
    return [
        Tensor(f"dense_{index}", layer.encoding, (layer.outputs, layer.inputs), _planes(layer))
        for index, layer in enumerate(model.layers)
    ]


def tensor_values(tensor: Tensor) -> NDArray[np.int8]:
    """A packed binary or ternary tensor's ``(rows, columns)`` values in {-1, 0, +1}."""
    columns = tensor.shape[1]
    if tensor.encoding == "binary":
        return unpack_binary(tensor.data[0], columns)
    return unpack_ternary(tensor.data[0], tensor.data[1], columns)


def _planes(layer: PackedLayer) -> NDArray[np.uint64]:
    return np.stack([layer.positive] if layer.nonzero is None else [layer.positive, layer.nonzero])


# Per-layer training state a bit network's frame may carry beside its weights (the 2-bit
# counter link, bitfleet.counterlink); inference ignores it.
STRENGTH = "strength"  # binary: +1 where the fleet's counter is strong
COORDINATOR_COUNTERS = "coordinator_counters"  # int32: in the coordinator's store only
TRAINING_STATE = (STRENGTH, COORDINATOR_COUNTERS)


def bitmlp_to_frame(
    model: BitMLP, meta: dict[str, Any] | None = None, state: list[Tensor] | None = None
) -> bytes:
    """Encode a bit network; ``meta`` carries provenance (data set, accuracy, ...), ``state``
    training-state tensors (:data:`TRAINING_STATE`)."""
    offset = Tensor("input_offset", "uint8", (model.layer_sizes[0],), model.input_offset)
    tensors = [offset, *bitmlp_weight_tensors(model), *(state or [])]
    header = {**(meta or {}), "model_type": MODEL_TYPE_BITMLP, "layers": model.layer_sizes}
    return encode_frame(KIND_MODEL, header, tensors)


def bitmlp_from_frame(frame: Frame) -> BitMLP:
    """Rebuild a bit network from a decoded frame, checking that its tensors fit together."""
    _check_model_type(frame, MODEL_TYPE_BITMLP, "bit network")
    offset = frame.tensors.get("input_offset")
    if offset is None or offset.encoding != "uint8" or len(offset.shape) != 1:
        raise ModelFileError("bit network frame lacks a 1-D uint8 'input_offset' tensor")
    count = sum(name.startswith("dense_") for name in frame.tensors)
    _check_tensor_names(
        frame, "bit network", "dense layers", ["input_offset"], ("dense",), count, TRAINING_STATE
    )
    for name in TRAINING_STATE:
        for index in range(count):
            state = frame.tensors.get(f"{name}_{index}")
            if state is not None and state.shape != frame.tensors[f"dense_{index}"].shape:
                raise ModelFileError(f"bit network {state.name} must have dense_{index}'s shape")
    layers = []
    for index in range(count):
        tensor = frame.tensors[f"dense_{index}"]
        if tensor.encoding not in ("binary", "ternary"):
            raise ModelFileError(f"bit network dense_{index} must be binary or ternary")
        outputs, inputs = tensor.shape
        nonzero = tensor.data[1] if tensor.encoding == "ternary" else None
        layers.append(PackedLayer(inputs, outputs, tensor.data[0], nonzero))
    if len({layer.encoding for layer in layers}) != 1:
        raise ModelFileError("bit network frame needs dense layers of one encoding")
    return _checked_model(frame, "bit network", lambda: BitMLP(layers, np.asarray(offset.data)))


def floatmlp_to_frame(model: FloatMLP, meta: dict[str, Any] | None = None) -> bytes:
    """Encode the float32 baseline (for side-by-side evaluation, not for devices)."""
    tensors = [Tensor("input_mean", "float32", model.input_mean.shape, model.input_mean)]
    for index, (w, b) in enumerate(zip(model.weights, model.biases, strict=True)):
        tensors.append(Tensor(f"weight_{index}", "float32", w.shape, w))
        tensors.append(Tensor(f"bias_{index}", "float32", b.shape, b))
    header = {**(meta or {}), "model_type": MODEL_TYPE_FLOATMLP, "layers": model.layer_sizes}
    return encode_frame(KIND_MODEL, header, tensors)


def floatmlp_from_frame(frame: Frame) -> FloatMLP:
    """Rebuild the float baseline: finite float32 tensors whose shapes chain."""
    _check_model_type(frame, MODEL_TYPE_FLOATMLP, "float network")
    count = (len(frame.tensors) - 1) // 2
    names = ("weight", "bias")
    _check_tensor_names(frame, "float network", "weights and biases", ["input_mean"], names, count)
    for tensor in frame.tensors.values():
        if tensor.encoding != "float32":
            raise ModelFileError(f"float network tensor {tensor.name} must be float32")
        if not np.isfinite(tensor.data).all():
            raise ModelFileError(f"float network tensor {tensor.name} holds NaN or infinity")
    mean = frame.tensors["input_mean"]
    if len(mean.shape) != 1:
        raise ModelFileError(f"float network input_mean must be 1-D, not of shape {mean.shape}")
    sizes = [mean.shape[0]]
    for index in range(count):
        weight, bias = frame.tensors[f"weight_{index}"], frame.tensors[f"bias_{index}"]
        if len(weight.shape) != 2 or weight.shape[0] != sizes[-1] or bias.shape != weight.shape[1:]:
            raise ModelFileError(
                f"float network tensors do not chain: layer {index} takes {sizes[-1]} inputs "
                f"but has weights {weight.shape} and bias {bias.shape}"
            )
        sizes.append(weight.shape[1])
    weights = [np.asarray(frame.tensors[f"weight_{i}"].data) for i in range(count)]
    biases = [np.asarray(frame.tensors[f"bias_{i}"].data) for i in range(count)]
    return _checked_model(
        frame, "float network", lambda: FloatMLP(weights, biases, np.asarray(mean.data))
    )


def fixedmlp_to_frame(model: FixedMLP, meta: dict[str, Any] | None = None) -> bytes:
    """Encode a fixed-point network: int8/int16 weights, int32 biases, int32 exponents.

    ``exponents`` is a ``(layers, 3)`` int32 tensor of (input, weight, output) exponents.
    """
    encoding = f"int{model.weight_bits}"
    exponents = np.array(
        [(layer.input_exp, layer.weight_exp, layer.output_exp) for layer in model.layers],
        dtype=np.int32,
    )
    tensors = [
        Tensor("input_offset", "uint8", model.input_offset.shape, model.input_offset),
        Tensor("exponents", "int32", exponents.shape, exponents),
    ]
    for index, layer in enumerate(model.layers):
        tensors.append(Tensor(f"weight_{index}", encoding, layer.weights.shape, layer.weights))
        tensors.append(Tensor(f"bias_{index}", "int32", layer.bias.shape, layer.bias))
    header = {
        **(meta or {}),
        "model_type": MODEL_TYPE_FIXEDMLP,
        "layers": model.layer_sizes,
        "weight_bits": model.weight_bits,
    }
    return encode_frame(KIND_MODEL, header, tensors)


def fixedmlp_from_frame(frame: Frame) -> FixedMLP:
    """Rebuild a fixed-point network, checking encodings, shapes and exponents."""
    _check_model_type(frame, MODEL_TYPE_FIXEDMLP, "fixed-point network")
    tensors = frame.tensors
    exponents = tensors.get("exponents")
    offset = tensors.get("input_offset")
    if exponents is None or exponents.encoding != "int32" or len(exponents.shape) != 2:
        raise ModelFileError("fixed-point frame lacks a 2-D int32 'exponents' tensor")
    if offset is None or offset.encoding != "uint8" or len(offset.shape) != 1:
        raise ModelFileError("fixed-point frame lacks a 1-D uint8 'input_offset' tensor")
    count = exponents.shape[0] if exponents.shape[1] == 3 else 0
    fixed = ["input_offset", "exponents"]
    names = ("weight", "bias")
    _check_tensor_names(frame, "fixed-point", "weights and biases", fixed, names, count)
    layers = []
    for index, (input_exp, weight_exp, output_exp) in enumerate(exponents.data.tolist()):
        weight, bias = tensors[f"weight_{index}"], tensors[f"bias_{index}"]
        if weight.encoding not in ("int8", "int16") or len(weight.shape) != 2:
            raise ModelFileError(f"fixed-point weight_{index} must be 2-D int8 or int16")
        if bias.encoding != "int32" or len(bias.shape) != 1:
            raise ModelFileError(f"fixed-point bias_{index} must be 1-D int32")
        layers.append(
            FixedLayer(
                np.array(weight.data),
                np.array(bias.data),
                input_exp,
                weight_exp,
                output_exp,
            )
        )
    return _checked_model(frame, "fixed-point", lambda: FixedMLP(layers, np.array(offset.data)))


def _check_model_type(frame: Frame, model_type: str, kind: str) -> None:
    if frame.meta.get("model_type") != model_type:
        raise ModelFileError(
            f"not a {kind} (model_type={excerpt(frame.meta.get('model_type'))}, "
            f"expected {model_type!r})"
        )


def _check_tensor_names(
    frame: Frame,
    kind: str,
    what: str,
    fixed: list[str],
    per_layer: tuple[str, ...],
    count: int,
    optional: tuple[str, ...] = (),
) -> None:
    """The frame holds exactly the ``fixed`` tensors and ``per_layer`` ones for ``count``
    layers, and may hold ``optional`` per-layer ones."""
    expected = {*fixed, *(f"{name}_{i}" for i in range(count) for name in per_layer)}
    allowed = expected | {f"{name}_{i}" for i in range(count) for name in optional}
    present = set(frame.tensors)
    if count < 1 or not expected <= present <= allowed:
        missing = sorted(expected - present)
        unexpected = sorted(present - allowed)
        raise ModelFileError(
            f"{kind} frame needs {what} for {count} layers (at least 1): missing "
            f"{excerpt(missing)}, unexpected {excerpt(unexpected)}"
        )


def _checked_model(frame: Frame, kind: str, build: Callable[[], M]) -> M:
    """The model ``build`` makes of the frame's tensors: its own checks failing make the frame
    inconsistent, and a ``layers`` entry in ``meta`` (what tools show) must be what the
    tensors hold."""
    try:
        model = build()
    except ConfigError as error:
        raise ModelFileError(f"{kind} frame is inconsistent: {error}") from None
    if "layers" in frame.meta and frame.meta["layers"] != model.layer_sizes:
        raise ModelFileError(
            f"model frame says layers {excerpt(frame.meta['layers'])} but its tensors hold "
            f"{model.layer_sizes}"
        )
    return model


def model_to_frame(model: Model, meta: dict[str, Any] | None = None) -> bytes:
    if isinstance(model, BitMLP):
        return bitmlp_to_frame(model, meta)
    if isinstance(model, FixedMLP):
        return fixedmlp_to_frame(model, meta)
    return floatmlp_to_frame(model, meta)


def model_from_frame(frame: Frame) -> Model:
    """Whichever model type the frame holds."""
    model_type = frame.meta.get("model_type")
    if model_type == MODEL_TYPE_FLOATMLP:
        return floatmlp_from_frame(frame)
    if model_type == MODEL_TYPE_FIXEDMLP:
        return fixedmlp_from_frame(frame)
    return bitmlp_from_frame(frame)


def save_model(path: str | Path, frame_bytes: bytes) -> int:
    """Write a frame atomically (temp file + rename): a failed write leaves no partial file."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    try:
        fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(frame_bytes)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except OSError as error:
        if "temp" in locals():
            Path(temp).unlink(missing_ok=True)
        raise ModelFileError(f"cannot write model file {target}: {error.strerror}") from None
    return len(frame_bytes)


def read_frame_file(path: str | Path) -> Frame:
    """Read and verify a model file."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"model file {path} does not exist") from None
    except OSError as error:
        raise ModelFileError(f"cannot read model file {path}: {error.strerror}") from None
    try:
        return decode_frame(data)
    except ModelFileError as error:
        raise ModelFileError(f"{path}: {error}") from None


def load_model(path: str | Path) -> tuple[Model, dict[str, Any]]:
    """Read a model file of any type, with its metadata."""
    frame = read_frame_file(path)
    return model_from_frame(frame), frame.meta
