"""How BF16 weight matrices are laid out in memory for the native GEMM.

A matrix W (N x K) is either row-major, shape (N, K), or cut into blocks of B columns stored one after
another, shape (K / B, N, B), each block N x B row-major. The second is for a long K: when several
activation rows multiply W (a verification batch, a prompt chunk) the kernels take K one block at a
time, so that the rows' activations for the block stay in L1. Row-major, such a pass reads a short run
of B values from every weight row, which the hardware prefetchers follow badly; in blocks it reads one
long run. The products have the same bits in either layout.

Either way the matrix should start on a 64-byte cache line, so that no 64-byte load touches two lines.
Arrays from this module and from the GGUF reader (mlspecqd.gguf) start on one; NumPy's own allocations
are aligned to 16 bytes only.
"""

from __future__ import annotations

import numpy as np

# At most this many columns per block: 9 activation rows of a block take 16 KiB of L1 as BF16.
MAX_BLOCK_COLUMNS = 896
# Narrower blocks leave too little work per block to pay for parking the partial sums between blocks.
MIN_BLOCK_COLUMNS = 512
# Up to this K the activations of a 9-row verification batch fit in L1 whole: row-major is best.
MAX_ROW_MAJOR_K = 2 * MAX_BLOCK_COLUMNS
# Blocks start at multiples of the widest kernel step (32 BF16 values).
COLUMN_ALIGNMENT = 32
CACHE_LINE_BYTES = 64


def block_columns_for(K: int) -> int | None:
    """The block width for a matrix with K columns: the widest multiple of 32 that divides K and is at
    most MAX_BLOCK_COLUMNS, if K is above MAX_ROW_MAJOR_K and that width is at least MIN_BLOCK_COLUMNS;
    otherwise None (row-major)."""
    if K <= MAX_ROW_MAJOR_K:
        return None
    for width in range(MAX_BLOCK_COLUMNS, MIN_BLOCK_COLUMNS - 1, -COLUMN_ALIGNMENT):
        if K % width == 0:
            return width
    return None


def cache_aligned_empty(shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """An uninitialised C-contiguous array whose data start on a cache line."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    storage = np.empty(nbytes + CACHE_LINE_BYTES, np.uint8)
    offset = -storage.ctypes.data % CACHE_LINE_BYTES
    return storage[offset : offset + nbytes].view(dtype).reshape(shape)


def in_column_blocks(w: np.ndarray, block_columns: int | None = None) -> np.ndarray:
    """A row-major (N, K) matrix as a new (K / B, N, B) array on a cache line, B = block_columns or
    block_columns_for(K); the matrix itself when B is None."""
    if w.ndim != 2:
        raise ValueError(f"in_column_blocks: expected a 2-D (N, K) matrix, got shape {w.shape}")
    N, K = w.shape
    width = block_columns if block_columns is not None else block_columns_for(K)
    if width is None:
        return w
    if width <= 0 or K % width:
        raise ValueError(f"in_column_blocks: {width} columns per block do not divide K={K}")
    blocks = cache_aligned_empty((K // width, N, width), w.dtype)
    blocks[...] = w.reshape(N, K // width, width).transpose(1, 0, 2)
    return blocks


def row_major(w: np.ndarray) -> np.ndarray:
    """The (N, K) matrix of a weight in column blocks (K / B, N, B); a 2-D matrix as it is."""
    if w.ndim != 3:
        return w
    blocks, N, width = w.shape
    return np.ascontiguousarray(w.transpose(1, 0, 2)).reshape(N, blocks * width)
