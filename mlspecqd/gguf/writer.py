"""Writing GGUF files: a source file's metadata carried over byte for byte, with new tensor data.

The output is written to a temporary name in the destination folder and renamed at the end, so a
failure never leaves a partial file under the requested name.
"""

from __future__ import annotations

import math
import os
import secrets
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, LlamaFileType

from mlspecqd import _native
from mlspecqd.engine import quant
from mlspecqd.gguf.file import DEQUANTIZABLE_TYPES, GGUFFile, open_gguf
from mlspecqd.gguf.format import MAGIC, GGUFError

OUTPUT_VERSION = 3
FILE_TYPE_KEY = "general.file_type"

# A cast turns a float32 matrix (rows x K) into the bytes of one GGUF tensor and their type. It must
# pick the type from K alone: conversion_plan sizes each tensor by casting one zero row first.
Cast = Callable[[np.ndarray], "tuple[np.ndarray, GGMLQuantizationType]"]


def cast_to_bf16(matrix: np.ndarray) -> tuple[np.ndarray, GGMLQuantizationType]:
    # "Dequantizing" F32 data to BF16 is the native, threaded round to nearest even.
    values = np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1)
    bits = _native.dequantize(values.view(np.uint8), int(GGMLQuantizationType.F32), values.size, True)
    return bits.view(np.uint8), GGMLQuantizationType.BF16


def cast_to_f32(matrix: np.ndarray) -> tuple[np.ndarray, GGMLQuantizationType]:
    return np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1).view(np.uint8), GGMLQuantizationType.F32


def cast_to_mxfp4(matrix: np.ndarray) -> tuple[np.ndarray, GGMLQuantizationType]:
    return quant.cast_to_mxfp4(np.ascontiguousarray(matrix, dtype=np.float32)).reshape(-1), GGMLQuantizationType.MXFP4


# convert() targets.
CASTS: dict[str, Cast] = {"bf16": cast_to_bf16, "f32": cast_to_f32, "mxfp4": cast_to_mxfp4}
# Targets meant for the linear layers only: the other matrices (token embeddings, a row lookup) become BF16.
LINEAR_ONLY_TARGETS = frozenset({"mxfp4"})

# general.file_type of a converted file, from the type of its matrices.
_FILE_TYPES = {
    GGMLQuantizationType.F32: LlamaFileType.ALL_F32,
    GGMLQuantizationType.F16: LlamaFileType.MOSTLY_F16,
    GGMLQuantizationType.BF16: LlamaFileType.MOSTLY_BF16,
    GGMLQuantizationType.Q8_0: LlamaFileType.MOSTLY_Q8_0,
    GGMLQuantizationType.MXFP4: LlamaFileType.MOSTLY_MXFP4_MOE,
}


@dataclass(frozen=True)
class OutputTensor:
    """A tensor to write: its GGUF type and NumPy-order shape, and a function producing its bytes
    (called once, when the tensor is written, so only one converted tensor is in memory at a time)."""

    name: str
    ggml_type: GGMLQuantizationType
    shape: tuple[int, ...]
    data: Callable[[], np.ndarray]

    @property
    def n_bytes(self) -> int:
        block_elements, block_bytes = GGML_QUANT_SIZES[self.ggml_type]
        return math.prod(self.shape) // block_elements * block_bytes


def write_gguf(
    out_path: str | os.PathLike[str], source: GGUFFile, tensors: Sequence[OutputTensor], file_type: int | None = None
) -> None:
    """Writes a GGUF file holding `source`'s metadata, byte for byte, and `tensors`, in order.
    general.file_type is set to `file_type`, or left out when None (llama.cpp then infers it from the
    tensor types). Atomic: on failure no file appears at out_path."""
    out_path = Path(out_path)
    if out_path.exists() and out_path.resolve() == source.path.resolve():
        raise GGUFError(out_path, "output", "would overwrite the file it is converted from")
    _check_tensors(out_path, tensors)
    # A unique hidden name in the same folder (so the rename stays on one file system), created with
    # the usual permissions.
    temporary = out_path.with_name(f".{out_path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    try:
        with open(temporary, "xb") as out:
            _write(out, out_path, source, tensors, file_type)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, out_path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _check_tensors(out_path: Path, tensors: Sequence[OutputTensor]) -> None:
    names = set()
    for tensor in tensors:
        if tensor.name in names:
            raise GGUFError(out_path, f"tensor {tensor.name}", "appears twice")
        names.add(tensor.name)
        block_elements = GGML_QUANT_SIZES[tensor.ggml_type][0]
        if not tensor.shape or tensor.shape[-1] % block_elements:
            problem = f"shape {tensor.shape} does not hold whole {tensor.ggml_type.name} blocks"
            raise GGUFError(out_path, f"tensor {tensor.name}", problem)


def _string(text: str) -> bytes:
    encoded = text.encode("utf-8")
    return struct.pack("<Q", len(encoded)) + encoded


def _metadata_entries(source: GGUFFile, file_type: int | None) -> list[bytes]:
    """Each metadata entry of `source` as stored, general.file_type replaced (or appended, or dropped)."""
    file_type_entry = None
    if file_type is not None:
        file_type_entry = _string(FILE_TYPE_KEY) + struct.pack("<II", GGUFValueType.UINT32, file_type)
    entries = []
    for key, (start, end) in source.metadata_spans.items():
        if key != FILE_TYPE_KEY:
            entries.append(source.buffer[start:end])
        elif file_type_entry is not None:
            entries.append(file_type_entry)
            file_type_entry = None
    if file_type_entry is not None:
        entries.append(file_type_entry)
    return entries


def _write(
    out: BinaryIO, out_path: Path, source: GGUFFile, tensors: Sequence[OutputTensor], file_type: int | None
) -> None:
    alignment = source.alignment  # general.alignment, copied with the metadata, or the default
    entries = _metadata_entries(source, file_type)
    out.write(MAGIC + struct.pack("<IQQ", OUTPUT_VERSION, len(tensors), len(entries)))
    for entry in entries:
        out.write(entry)
    offset = 0
    for tensor in tensors:
        dims = tensor.shape[::-1]
        out.write(_string(tensor.name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, tensor.ggml_type, offset))
        offset += _padded(tensor.n_bytes, alignment)
    _pad(out, alignment)
    for tensor in tensors:
        try:
            data = np.ascontiguousarray(tensor.data())
        except GGUFError:
            raise
        except ValueError as error:
            raise GGUFError(out_path, f"tensor {tensor.name}", f"could not be produced: {error}") from error
        if data.nbytes != tensor.n_bytes:
            expected = f"expected {tensor.n_bytes} for {tensor.ggml_type.name} {tensor.shape}"
            raise GGUFError(out_path, f"tensor {tensor.name}", f"produced {data.nbytes} bytes, {expected}")
        out.write(memoryview(data).cast("B"))
        _pad(out, alignment)


def _padded(n_bytes: int, alignment: int) -> int:
    return (n_bytes + alignment - 1) // alignment * alignment


def _pad(out: BinaryIO, alignment: int) -> None:
    position = out.tell()
    out.write(bytes(_padded(position, alignment) - position))


def conversion_plan(
    source: GGUFFile, cast: Cast, out_path: Path, linear_only: bool = False
) -> tuple[list[OutputTensor], GGMLQuantizationType | None]:
    """The tensors of `source` converted by `cast`: every tensor of two or more dimensions goes through
    the cast (token_embd and output included; llama.cpp reads any type for them), 1-D tensors (norms,
    biases, rope factors) and MoE routers (which route in float32) become F32. With linear_only, only
    linear-layer weights (quant.is_linear_weight) take the cast and the other matrices become BF16. Also
    returns the type of the largest converted tensor."""
    row_types: dict[tuple[Cast, int], GGMLQuantizationType] = {}

    def row_type(name: str, cast: Cast, row_length: int) -> GGMLQuantizationType:
        """The type the cast gives rows of this length, found by casting a row of zeros."""
        if (cast, row_length) not in row_types:
            try:
                raw, ggml_type = cast(np.zeros((1, row_length), dtype=np.float32))
            except ValueError as error:
                raise GGUFError(out_path, f"tensor {name}", f"cannot be cast: {error}") from error
            probe = OutputTensor(name, GGMLQuantizationType(ggml_type), (1, row_length), lambda: raw)
            if raw.nbytes != probe.n_bytes:
                problem = f"the cast gives {raw.nbytes} bytes for a row of {row_length}, {probe.ggml_type.name}"
                problem += f" needs {probe.n_bytes}"
                raise GGUFError(out_path, f"tensor {name}", problem)
            row_types[cast, row_length] = probe.ggml_type
        return row_types[cast, row_length]

    plan: list[OutputTensor] = []
    largest: tuple[int, GGMLQuantizationType] | None = None
    for name, info in source.tensors.items():
        if info.ggml_type not in DEQUANTIZABLE_TYPES:  # found before anything is written
            raise GGUFError(source.path, f"tensor {name}", f"type {info.ggml_type.name} cannot be converted")
        if len(info.shape) == 1 or quant.is_router_weight(name):
            plan.append(OutputTensor(name, GGMLQuantizationType.F32, info.shape, _f32_bytes(source, name)))
            continue
        tensor_cast = cast if not linear_only or quant.is_linear_weight(name) else cast_to_bf16
        ggml_type = row_type(name, tensor_cast, info.shape[-1])
        data = _cast_bytes(source, name, tensor_cast, ggml_type, out_path)
        plan.append(OutputTensor(name, ggml_type, info.shape, data))
        if largest is None or info.n_elements > largest[0]:
            largest = (info.n_elements, ggml_type)
    return plan, (largest[1] if largest else None)


def _f32_bytes(source: GGUFFile, name: str) -> Callable[[], np.ndarray]:
    return lambda: source.tensor_f32(name).reshape(-1).view(np.uint8)


def _cast_bytes(
    source: GGUFFile, name: str, cast: Cast, ggml_type: GGMLQuantizationType, out_path: Path
) -> Callable[[], np.ndarray]:
    def produce() -> np.ndarray:
        values = source.tensor_f32(name)
        raw, produced_type = cast(values.reshape(-1, values.shape[-1]))
        if produced_type != ggml_type:
            problem = f"the cast produced {GGMLQuantizationType(produced_type).name}, announced {ggml_type.name}"
            raise GGUFError(out_path, f"tensor {name}", problem)
        return raw

    return produce


def convert(in_path: str | os.PathLike[str], out_path: str | os.PathLike[str], target: str) -> None:
    """Converts a GGUF model to `target` (a key of CASTS: "bf16", "f32", ...): metadata and tokenizer
    unchanged except general.file_type; written atomically (see write_gguf)."""
    out_path = Path(out_path)
    cast = CASTS.get(target)
    if cast is None:
        raise GGUFError(out_path, "target", f"unknown target {target!r} (choose from {', '.join(sorted(CASTS))})")
    with open_gguf(in_path) as source:
        plan, main_type = conversion_plan(source, cast, out_path, linear_only=target in LINEAR_ONLY_TARGETS)
        file_type = _FILE_TYPES.get(main_type)
        write_gguf(out_path, source, plan, None if file_type is None else int(file_type))

