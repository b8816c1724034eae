"""The GGUF container format: parse the header, metadata and tensor table of a memory-mapped file.

Every count and length in the header is checked against the bytes left in the file before it is
trusted, so a lying or truncated header gives a GGUFError, never a huge allocation or a long loop.
"""

from __future__ import annotations

import itertools
import math
import reprlib
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # ggml tensors have at most four dimensions
HEADER_BYTES = 24  # magic, version, tensor count, metadata count

_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
    GGUFValueType.BOOL: "<?",
}
_SCALAR_DTYPES = {value_type: np.dtype(fmt.replace("?", "u1")) for value_type, fmt in _SCALAR_FORMATS.items()}
# The fewest bytes one table entry can take, to bound counts before reading: a metadata entry is a
# key string (8-byte length) + a 4-byte type + a value of at least 1 byte; a tensor entry is a name
# string + a 4-byte dimension count + a 4-byte type + an 8-byte offset.
_MIN_METADATA_ENTRY_BYTES = 8 + 4 + 1
_MIN_TENSOR_ENTRY_BYTES = 8 + 4 + 4 + 8
_STRING_LENGTH_BYTES = 8
# The longest excerpt of a file's own text (a key, a tensor name, a value) that an error message quotes.
_EXCERPT_CHARS = 200
_PROBLEM_CHARS = 1000


def one_line(text: str, limit: int | None = None) -> str:
    """`text` fit for a one-line message: characters that are not printable (line breaks, NULs, other
    controls) as Python escapes, and past `limit` characters cut, with "..." and the length said."""
    if not text.isprintable():
        text = "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in text)
    if limit is not None and len(text) > limit:
        text = f"{text[:limit]}... ({len(text)} characters)"
    return text


_EXCERPTS = reprlib.Repr()
_EXCERPTS.maxstring = _EXCERPTS.maxother = 80
_EXCERPTS.maxlist = _EXCERPTS.maxtuple = _EXCERPTS.maxdict = _EXCERPTS.maxset = 8


def excerpt(value: Any) -> str:
    """repr(value), shortened, for a message that quotes a value from a file or a request: such a value
    may be a string or a list of any length."""
    return _EXCERPTS.repr(value)


class GGUFError(ValueError):
    """A GGUF file this package cannot use. The message reads "<path>: <field or tensor>: <problem>", on
    one line whatever the file holds (its keys and names are quoted as one_line excerpts)."""

    def __init__(self, path: str | Path, where: str, problem: str) -> None:
        where_text, problem_text = one_line(where, _EXCERPT_CHARS), one_line(problem, _PROBLEM_CHARS)
        super().__init__(f"{one_line(str(path))}: {where_text}: {problem_text}")
        self.path = Path(path)
        self.where = where
        self.problem = problem


@dataclass(frozen=True, eq=False)
class TensorInfo:
    """One tensor of a GGUF file; `raw` is a read-only view of its bytes in the memory-mapped file."""

    name: str
    ggml_type: GGMLQuantizationType
    shape: tuple[int, ...]  # NumPy order: a weight matrix is (out_features N, in_features K)
    raw: np.ndarray  # uint8, 1-D

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class ParsedFile:
    """What parse() finds in a GGUF file."""

    version: int
    metadata: dict[str, Any]
    metadata_spans: dict[str, tuple[int, int]]  # byte range of each whole metadata entry, for verbatim copies
    alignment: int
    tensors: dict[str, TensorInfo]


class _Reader:
    """Bounds-checked little-endian reads from a buffer, naming the file and field on failure."""

    def __init__(self, path: Path, buffer: Any, size: int) -> None:
        self.path = path
        self.buffer = buffer
        self.size = size
        self.position = 0

    def fail(self, where: str, problem: str) -> GGUFError:
        return GGUFError(self.path, where, problem)

    def require(self, n_bytes: int, where: str) -> None:
        if n_bytes > self.size - self.position:
            problem = f"needs {n_bytes} bytes at offset {self.position} but the file ends at {self.size} (truncated?)"
            raise self.fail(where, problem)

    def string(self, where: str, index: int | None = None) -> str:
        """A length-prefixed UTF-8 string; `index` names an array item (formatted only on failure)."""
        position = self.position
        if self.size - position < _STRING_LENGTH_BYTES:
            self.require(_STRING_LENGTH_BYTES, _item(where, index))
        (length,) = struct.unpack_from("<Q", self.buffer, position)
        position += _STRING_LENGTH_BYTES
        if length > self.size - position:
            self.position = position
            self.require(length, _item(where, index))
        data = self.buffer[position : position + length]
        self.position = position + length
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as error:
            problem = f"string is not valid UTF-8 ({error.reason} at byte {error.start})"
            raise self.fail(_item(where, index), problem) from None

    def scalar(self, value_type: GGUFValueType, where: str) -> Any:
        fmt = _SCALAR_FORMATS[value_type]
        n_bytes = struct.calcsize(fmt)
        self.require(n_bytes, where)
        (value,) = struct.unpack_from(fmt, self.buffer, self.position)
        self.position += n_bytes
        return value

    def u32(self, where: str) -> int:
        return self.scalar(GGUFValueType.UINT32, where)

    def u64(self, where: str) -> int:
        return self.scalar(GGUFValueType.UINT64, where)

    def value_type(self, where: str) -> GGUFValueType:
        number = self.u32(where)
        try:
            return GGUFValueType(number)
        except ValueError:
            raise self.fail(where, f"unknown metadata value type {number}") from None

    def value(self, value_type: GGUFValueType, where: str) -> Any:
        if value_type == GGUFValueType.STRING:
            return self.string(where)
        if value_type == GGUFValueType.ARRAY:
            return self.array(where)
        return self.scalar(value_type, where)

    def array(self, where: str) -> list[Any]:
        item_type = self.value_type(where)
        count = self.u64(where)
        if item_type == GGUFValueType.ARRAY:
            raise self.fail(where, "arrays of arrays are not supported")
        item_bytes = _STRING_LENGTH_BYTES if item_type == GGUFValueType.STRING else _SCALAR_DTYPES[item_type].itemsize
        if count > (self.size - self.position) // item_bytes:
            left = self.size - self.position
            raise self.fail(where, f"array of {count} {item_type.name} items cannot fit in the {left} bytes left")
        if item_type == GGUFValueType.STRING:
            return [self.string(where, index) for index in range(count)]
        dtype = _SCALAR_DTYPES[item_type]
        items = np.frombuffer(self.buffer, dtype=dtype, count=count, offset=self.position)
        self.position += count * dtype.itemsize
        return items.astype(bool).tolist() if item_type == GGUFValueType.BOOL else items.tolist()


def _item(where: str, index: int | None) -> str:
    return where if index is None else f"{where}[{index}]"


def parse(path: Path, buffer: Any, size: int) -> ParsedFile:
    """Parses the GGUF file whose `size` bytes are `buffer` (a memory map); tensors are views into it."""
    reader = _Reader(path, buffer, size)
    if size < HEADER_BYTES:
        raise reader.fail("header", f"file is {size} bytes, shorter than a GGUF header (truncated?)")
    magic = bytes(buffer[0:4])
    if magic != MAGIC:
        raise reader.fail("magic", f"expected {MAGIC!r}, found {magic!r}: not a GGUF file")
    reader.position = 4
    version = reader.u32("version")
    if version not in SUPPORTED_VERSIONS:
        if version & 0xFFFF == 0 and version >> 16 in SUPPORTED_VERSIONS:
            raise reader.fail("version", "big-endian GGUF files are not supported")
        raise reader.fail("version", f"GGUF version {version} is not supported (supported: {SUPPORTED_VERSIONS})")
    tensor_count = reader.u64("tensor_count")
    metadata_count = reader.u64("metadata_kv_count")
    left = size - HEADER_BYTES
    if metadata_count > left // _MIN_METADATA_ENTRY_BYTES:
        problem = f"{metadata_count} entries cannot fit in a file of {size} bytes (truncated or corrupt)"
        raise reader.fail("metadata_kv_count", problem)
    if tensor_count > (left - metadata_count * _MIN_METADATA_ENTRY_BYTES) // _MIN_TENSOR_ENTRY_BYTES:
        problem = f"{tensor_count} tensors cannot fit in a file of {size} bytes (truncated or corrupt)"
        raise reader.fail("tensor_count", problem)

    metadata: dict[str, Any] = {}
    value_types: dict[str, GGUFValueType] = {}
    spans: dict[str, tuple[int, int]] = {}
    for index in range(metadata_count):
        start = reader.position
        key = reader.string(f"metadata entry {index} key")
        if key in metadata:
            raise reader.fail(key, "metadata key appears twice")
        value_type = reader.value_type(key)
        metadata[key] = reader.value(value_type, key)
        value_types[key] = value_type
        spans[key] = (start, reader.position)

    alignment = _alignment(reader, metadata, value_types)
    entries = [_tensor_entry(reader, index) for index in range(tensor_count)]
    data_start = _align(reader.position, alignment)
    tensors = _tensors(reader, entries, data_start, alignment)
    return ParsedFile(version, metadata, spans, alignment, tensors)


def _align(offset: int, alignment: int) -> int:
    return (offset + alignment - 1) // alignment * alignment


def _alignment(reader: _Reader, metadata: dict[str, Any], value_types: dict[str, GGUFValueType]) -> int:
    key = "general.alignment"
    if key not in metadata:
        return DEFAULT_ALIGNMENT
    alignment = metadata[key]
    if value_types[key] != GGUFValueType.UINT32 or alignment <= 0 or alignment & (alignment - 1):
        raise reader.fail(key, f"must be a power of two stored as UINT32, got {alignment!r} ({value_types[key].name})")
    return alignment


@dataclass(frozen=True)
class _TensorEntry:
    name: str
    dims: tuple[int, ...]  # GGUF order: dims[0] is the contiguous (innermost) dimension
    ggml_type: GGMLQuantizationType
    offset: int  # from the start of the data section


def _tensor_entry(reader: _Reader, index: int) -> _TensorEntry:
    name = reader.string(f"tensor entry {index} name")
    where = f"tensor {name}"
    n_dims = reader.u32(where)
    if not 1 <= n_dims <= MAX_DIMS:
        raise reader.fail(where, f"{n_dims} dimensions (a ggml tensor has 1 to {MAX_DIMS})")
    dims = tuple(reader.u64(where) for _ in range(n_dims))
    if min(dims) < 1:
        raise reader.fail(where, f"dimensions {dims} must all be at least 1")
    type_number = reader.u32(where)
    try:
        ggml_type = GGMLQuantizationType(type_number)
    except ValueError:
        raise reader.fail(where, f"unknown ggml type {type_number}") from None
    if ggml_type not in GGML_QUANT_SIZES:
        raise reader.fail(where, f"ggml type {ggml_type.name} has no known block size")
    offset = reader.u64(where)
    return _TensorEntry(name, dims, ggml_type, offset)


def _tensors(reader: _Reader, entries: list[_TensorEntry], data_start: int, alignment: int) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    extents: list[tuple[int, int, str]] = []
    for entry in entries:
        where = f"tensor {entry.name}"
        if entry.name in tensors:
            raise reader.fail(where, "tensor name appears twice")
        block_elements, block_bytes = GGML_QUANT_SIZES[entry.ggml_type]
        if entry.dims[0] % block_elements:
            problem = f"row length {entry.dims[0]} is not a multiple of the {entry.ggml_type.name} block size"
            raise reader.fail(where, f"{problem} {block_elements}")
        n_bytes = math.prod(entry.dims) // block_elements * block_bytes
        if entry.offset % alignment:
            raise reader.fail(where, f"data offset {entry.offset} is not a multiple of the alignment {alignment}")
        start = data_start + entry.offset
        if start > reader.size or n_bytes > reader.size - start:
            raise reader.fail(
                where,
                f"{n_bytes} bytes of {entry.ggml_type.name} data for shape {entry.dims[::-1]} at offset {start} "
                f"run past the end of the file ({reader.size} bytes)",
            )
        raw = np.frombuffer(reader.buffer, dtype=np.uint8, count=n_bytes, offset=start)
        tensors[entry.name] = TensorInfo(entry.name, entry.ggml_type, entry.dims[::-1], raw)
        extents.append((start, start + n_bytes, entry.name))
    extents.sort()
    for (_, end, name), (next_start, _, next_name) in itertools.pairwise(extents):
        if end > next_start:
            info = tensors[name]
            raise reader.fail(
                f"tensor {name}",
                f"its {info.raw.nbytes} bytes ({info.ggml_type.name}, shape {info.shape}) overlap tensor {next_name}: "
                "the shape disagrees with the data layout",
            )
    return tensors
