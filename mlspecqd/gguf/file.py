"""An open GGUF file: metadata, model spec, memory-mapped tensors and their native dequantization."""

from __future__ import annotations

import mmap
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType

from mlspecqd import _native
from mlspecqd.gguf.format import GGUFError, ParsedFile, TensorInfo, parse
from mlspecqd.gguf.spec import ModelSpec, read_model_spec

DEQUANTIZABLE_TYPES = frozenset(GGMLQuantizationType(number) for number in _native.dequantizable_types())
# Values checked for NaN and infinity per pass: a chunk and its scratch stay in L2.
_FINITE_CHECK_CHUNK = 1 << 16


class GGUFFile:
    """A GGUF file mapped into memory. Tensor bytes are never copied until dequantized; arrays taken
    from the file stay valid after close() (the mapping lives as long as any view of it)."""

    def __init__(self, path: Path, parsed: ParsedFile, buffer: mmap.mmap) -> None:
        self.path = path
        self.version = parsed.version
        self.metadata: dict[str, Any] = parsed.metadata
        self.metadata_spans = parsed.metadata_spans  # where each metadata entry is stored, for copies
        self.alignment = parsed.alignment
        self.tensors: dict[str, TensorInfo] = parsed.tensors
        self._buffer: mmap.mmap | None = buffer

    @cached_property
    def spec(self) -> ModelSpec:
        """The model's hyper-parameters; a GGUFError when this is not a model this package runs."""
        return read_model_spec(self.path, self.metadata, self.tensors)

    @property
    def buffer(self) -> mmap.mmap:
        """The whole file, memory-mapped (read-only)."""
        if self._buffer is None:
            raise ValueError(f"{self.path}: the file is closed")
        return self._buffer

    def tensor(self, name: str) -> TensorInfo:
        info = self.tensors.get(name)
        if info is None:
            raise GGUFError(self.path, f"tensor {name}", "not in the file")
        return info

    def tensor_f32(self, name: str) -> np.ndarray:
        """The tensor as float32 values, shaped as TensorInfo.shape (bit-identical to gguf.quants); a
        GGUFError when a value is NaN or infinite (see _check_finite)."""
        return self._dequantize(name, to_bf16=False)

    def tensor_bf16(self, name: str) -> np.ndarray:
        """The tensor as BF16 bit patterns (uint16), rounded to nearest even from the float32 values; a
        GGUFError when a value is NaN or infinite."""
        return self._dequantize(name, to_bf16=True)

    def _dequantize(self, name: str, to_bf16: bool) -> np.ndarray:
        info = self.tensor(name)
        if info.ggml_type not in DEQUANTIZABLE_TYPES:
            supported = ", ".join(sorted(t.name for t in DEQUANTIZABLE_TYPES))
            problem = f"type {info.ggml_type.name} cannot be dequantized (supported: {supported})"
            raise GGUFError(self.path, f"tensor {name}", problem)
        values = _native.dequantize(info.raw, int(info.ggml_type), info.n_elements, to_bf16)
        self._check_finite(name, values, to_bf16)
        return values.reshape(info.shape)

    def _check_finite(self, name: str, values: np.ndarray, bf16: bool) -> None:
        """A GGUFError naming the first NaN or infinity among the tensor's values. A trained model has
        none: one in a weight spreads through every activation after it (all logits NaN: greedy decoding
        would repeat token 0), so such a file is corrupt, and it is refused when its tensors are read."""
        # Read as unsigned integers, a value is NaN or infinite when its exponent bits are all ones; shifting
        # the sign bit out leaves exactly those values at or above the shifted exponent mask.
        bits = values.view(np.uint16 if bf16 else np.uint32)
        threshold = bits.dtype.type(0xFF00 if bf16 else 0xFF000000)
        scratch = np.empty(min(bits.size, _FINITE_CHECK_CHUNK), bits.dtype)
        for start in range(0, bits.size, _FINITE_CHECK_CHUNK):
            chunk = bits[start : start + _FINITE_CHECK_CHUNK]
            shifted = np.left_shift(chunk, 1, out=scratch[: chunk.size])
            if shifted.max() >= threshold:
                index = start + int(np.argmax(shifted >= threshold))
                value = np.array(int(values[index]) << 16, np.uint32).view(np.float32) if bf16 else values[index]
                rounded = " in BF16" if bf16 else ""  # float32's largest values round up to infinity in BF16
                problem = f"value {index} of {bits.size} is {float(value)}{rounded}: NaN and infinite weights are"
                raise GGUFError(self.path, f"tensor {name}", f"{problem} refused")

    def close(self) -> None:
        """Drops this object's references to the mapping; it is unmapped once no array uses it."""
        self._buffer = None
        self.tensors = {}

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r}, {len(self.tensors)} tensors)"


def open_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """Opens and validates a GGUF file (header, metadata, tensor table); its spec is read on first use."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                raise GGUFError(path, "header", "file is empty")
            buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as error:
        raise GGUFError(path, "file", error.strerror or str(error)) from error
    return GGUFFile(path, parse(path, buffer, size), buffer)
