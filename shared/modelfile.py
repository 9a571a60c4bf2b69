"""Model files (``.bfm``): bit, fixed-point and float networks to and from frames and disk."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import ConfigError, ModelFileError
from shared.fixedpoint import FixedLayer, FixedMLP
from shared.floatmlp import FloatMLP
from shared.frames import KIND_MODEL, Frame, Tensor, decode_frame, encode_frame
from shared.models import BitMLP, PackedLayer

MODEL_TYPE_BITMLP = "bitmlp"
MODEL_TYPE_FLOATMLP = "floatmlp"
MODEL_TYPE_FIXEDMLP = "fixedmlp"
Model = BitMLP | FloatMLP | FixedMLP


def bitmlp_to_frame(model: BitMLP, meta: dict[str, Any] | None = None) -> bytes:
    """Encode a bit network; ``meta`` carries provenance (data set, accuracy, ...)."""
    tensors = [Tensor("input_offset", "uint8", (model.layer_sizes[0],), model.input_offset)]
    for index, layer in enumerate(model.layers):
        planes = [layer.positive] if layer.nonzero is None else [layer.positive, layer.nonzero]
        tensors.append(
            Tensor(
                f"dense_{index}", layer.encoding, (layer.outputs, layer.inputs), np.stack(planes)
            )
        )
    header = {**(meta or {}), "model_type": MODEL_TYPE_BITMLP, "layers": model.layer_sizes}
    return encode_frame(KIND_MODEL, header, tensors)


def bitmlp_from_frame(frame: Frame) -> BitMLP:
    """Rebuild a bit network from a decoded frame, checking that its tensors fit together."""
    if frame.meta.get("model_type") != MODEL_TYPE_BITMLP:
        raise ModelFileError(f"not a bit network (model_type={frame.meta.get('model_type')!r})")
    offset = frame.tensors.get("input_offset")
    if offset is None or offset.encoding != "uint8" or len(offset.shape) != 1:
        raise ModelFileError("bit network frame lacks a 1-D uint8 'input_offset' tensor")
    layers = []
    for index in range(len(frame.tensors) - 1):
        tensor = frame.tensors.get(f"dense_{index}")
        if tensor is None or tensor.encoding not in ("binary", "ternary"):
            raise ModelFileError(f"bit network frame lacks a packed 'dense_{index}' tensor")
        outputs, inputs = tensor.shape
        nonzero = tensor.data[1] if tensor.encoding == "ternary" else None
        layers.append(PackedLayer(inputs, outputs, tensor.data[0], nonzero))
    if not layers or len({layer.encoding for layer in layers}) != 1:
        raise ModelFileError("bit network frame needs dense layers of one encoding")
    try:
        return BitMLP(layers, np.asarray(offset.data))
    except ConfigError as error:
        raise ModelFileError(f"bit network frame is inconsistent: {error}") from None


def floatmlp_to_frame(model: FloatMLP, meta: dict[str, Any] | None = None) -> bytes:
    """Encode the float32 baseline (for side-by-side evaluation, not for devices)."""
    tensors = [Tensor("input_mean", "float32", model.input_mean.shape, model.input_mean)]
    for index, (w, b) in enumerate(zip(model.weights, model.biases, strict=True)):
        tensors.append(Tensor(f"weight_{index}", "float32", w.shape, w))
        tensors.append(Tensor(f"bias_{index}", "float32", b.shape, b))
    header = {**(meta or {}), "model_type": MODEL_TYPE_FLOATMLP, "layers": model.layer_sizes}
    return encode_frame(KIND_MODEL, header, tensors)


def floatmlp_from_frame(frame: Frame) -> FloatMLP:
    count = (len(frame.tensors) - 1) // 2
    try:
        weights = [np.asarray(frame.tensors[f"weight_{i}"].data) for i in range(count)]
        biases = [np.asarray(frame.tensors[f"bias_{i}"].data) for i in range(count)]
        mean = np.asarray(frame.tensors["input_mean"].data)
    except KeyError as missing:
        raise ModelFileError(f"float network frame lacks tensor {missing}") from None
    sizes = [mean.shape[0]] + [w.shape[-1] for w in weights]
    if count == 0 or any(
        w.shape != (n_in, n_out) or b.shape != (n_out,)
        for w, b, n_in, n_out in zip(weights, biases, sizes[:-1], sizes[1:], strict=True)
    ):
        raise ModelFileError("float network frame has tensors that do not chain")
    return FloatMLP(weights, biases, mean)


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
    tensors = frame.tensors
    exponents = tensors.get("exponents")
    offset = tensors.get("input_offset")
    if exponents is None or exponents.encoding != "int32" or len(exponents.shape) != 2:
        raise ModelFileError("fixed-point frame lacks a 2-D int32 'exponents' tensor")
    if offset is None or offset.encoding != "uint8":
        raise ModelFileError("fixed-point frame lacks a uint8 'input_offset' tensor")
    count = exponents.shape[0]
    if exponents.shape[1] != 3 or len(tensors) != 2 + 2 * count:
        raise ModelFileError(f"fixed-point frame needs weights and biases for {count} layers")
    layers = []
    for index, (input_exp, weight_exp, output_exp) in enumerate(exponents.data.tolist()):
        weight, bias = tensors.get(f"weight_{index}"), tensors.get(f"bias_{index}")
        if weight is None or bias is None or weight.encoding not in ("int8", "int16"):
            raise ModelFileError(f"fixed-point frame lacks int8/int16 weight_{index} or bias")
        if bias.encoding != "int32":
            raise ModelFileError(f"fixed-point bias_{index} must be int32")
        layers.append(
            FixedLayer(
                np.array(weight.data),
                np.array(bias.data),
                input_exp,
                weight_exp,
                output_exp,
            )
        )
    try:
        return FixedMLP(layers, np.array(offset.data))
    except ConfigError as error:
        raise ModelFileError(f"fixed-point frame is inconsistent: {error}") from None


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
