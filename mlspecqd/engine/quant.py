"""Precision recipes for the native weights: the MXFP4 cast (native, threaded) and its exact inverse.

MXFP4 is OCP Microscaling FP4 in GGUF's layout (ggml type 39): per 32 values along K, one E8M0 exponent
byte then 16 bytes of E2M1 codes (byte j: element j in the low nibble, element j + 16 in the high one).

The cast (`cast_to_mxfp4`) follows the OCP rules:
- block scale 2^e with e = floor(log2(absmax)) - 2, so the largest magnitude lands in [4, 8); stored as
  the byte e + 127, clamped below at 0 (scale 2^-127). Finite input never gives more than 252.
- elements x / 2^e rounded to the nearest E2M1 value, ties to the even code, saturating at +-6.
- an all-zero block is byte 0 with zero codes; the sign of every element is kept, so -0.0 (and a
  negative value that rounds to zero) is code 8, which decodes to +0.0.
- NaN or infinity: refused with QuantizationError naming the tensor and element. (OCP would write the
  NaN scale 0xFF, but ggml reads 0xFF as the finite scale 2^128, so such a block would decode to
  garbage rather than NaN.)

Where gguf.quants' (and ggml's reference) MXFP4 quantizer differs:
- ties go to the smaller magnitude (first index of minimum error), not to the even code: 0.75 -> 0.5
  where OCP gives 1, 1.75 -> 1.5 where OCP gives 2, 3.5 -> 3, and the same for negatives;
- negative values that round to zero get code 0 (+0), not code 8;
- the exponent comes from a float32 log2, which rounds up just below a power of two (absmax =
  8 * (1 - 2^-24) gives e = 1 there, 0 here), so those blocks use a scale twice as large;
- blocks with absmax below 2^-125 wrap around in its uint8 conversion instead of clamping at 0.
Decoding is the same everywhere: `mxfp4_to_float32` equals gguf.quants.dequantize bit for bit.
"""

from __future__ import annotations

import numpy as np

from mlspecqd import _native

MXFP4_BLOCK_VALUES = 32
MXFP4_BLOCK_BYTES = 17

# Doubled E2M1 values by code (ggml's convention): value = DOUBLED[code] * 2^(byte - 128).
_DOUBLED_E2M1 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.float32)


class QuantizationError(ValueError):
    """Weights that cannot be cast or decoded; the message names the tensor and what is wrong."""


def mxfp4_row_bytes(K: int) -> int:
    """Bytes of MXFP4 blocks holding K values (K a positive multiple of 32)."""
    if K <= 0 or K % MXFP4_BLOCK_VALUES:
        raise QuantizationError(f"K={K} is not a positive multiple of {MXFP4_BLOCK_VALUES} (the MXFP4 block size)")
    return K // MXFP4_BLOCK_VALUES * MXFP4_BLOCK_BYTES


def cast_to_mxfp4(weights: np.ndarray, name: str = "weights") -> np.ndarray:
    """float32, or uint16 holding BF16, of shape (..., K) -> uint8 MXFP4 blocks of shape (..., K/32*17).

    K (the reduction dimension, last axis) must be a multiple of 32. Runs natively on the thread pool.
    Raises QuantizationError (a ValueError) for another dtype or K, or a NaN/infinite element.
    """
    weights = np.asarray(weights)
    if weights.dtype not in (np.float32, np.uint16):
        raise QuantizationError(
            f"{name}: cannot cast dtype {weights.dtype} to MXFP4 (expected float32, or uint16 holding BF16)"
        )
    if weights.ndim < 1:
        raise QuantizationError(f"{name}: cannot cast a 0-d array to MXFP4")
    K = weights.shape[-1]
    if K <= 0 or K % MXFP4_BLOCK_VALUES:
        raise QuantizationError(
            f"{name} {weights.shape}: K={K} is not a positive multiple of {MXFP4_BLOCK_VALUES} (the MXFP4 block size)"
        )
    try:
        return _native.cast_mxfp4(weights, name)
    except ValueError as error:  # the native cast found a NaN or an infinity; the message says where
        raise QuantizationError(str(error)) from None


def mxfp4_to_float32(blocks: np.ndarray, K: int, name: str = "blocks") -> np.ndarray:
    """uint8 MXFP4 blocks of shape (..., K/32*17) -> float32 (..., K), exactly as gguf.quants decodes."""
    blocks = np.asarray(blocks)
    if blocks.dtype != np.uint8 or blocks.ndim < 1:
        raise QuantizationError(f"{name}: MXFP4 blocks must be a uint8 array, got {blocks.dtype} {blocks.shape}")
    try:
        row_bytes = mxfp4_row_bytes(K)
    except QuantizationError as error:
        raise QuantizationError(f"{name}: {error}") from None
    if blocks.shape[-1] != row_bytes:
        raise QuantizationError(f"{name} {blocks.shape}: last axis is not {row_bytes} bytes (K={K} in MXFP4 blocks)")
    grouped = blocks.reshape(-1, MXFP4_BLOCK_BYTES)
    exponent = grouped[:, 0].astype(np.uint32)
    # 2^(byte - 128) built from its bits: bytes 0 and 1 are the subnormals 2^-128 and 2^-127.
    half_scale_bits = np.where(exponent < 2, np.uint32(0x00200000) << exponent, (exponent - 1) << np.uint32(23))
    half_scale = half_scale_bits.astype(np.uint32).view(np.float32)
    packed = grouped[:, 1:]
    codes = np.concatenate([packed & 0x0F, packed >> 4], axis=1)
    with np.errstate(over="ignore"):  # bytes 253..255 with large codes are infinite, as in gguf
        values = _DOUBLED_E2M1[codes] * half_scale[:, None]
    return values.reshape(*blocks.shape[:-1], K)


# GGUF names of the weights a decoder multiplies activations by (Linear layers): the ones an MXFP4
# copy of a model stores as MXFP4. Norms, biases, embeddings and the MoE router stay as they are.
_LINEAR_WEIGHT_SUFFIXES = tuple(
    f".{name}.weight"
    for name in (
        "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down",
        "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps", "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp",
    )
)


_EXPERT_WEIGHT_SUFFIXES = (".ffn_gate_exps.weight", ".ffn_up_exps.weight", ".ffn_down_exps.weight")


def is_expert_weight(name: str) -> bool:
    """True for the stacks of expert matrices, blk.N.ffn_{gate,up,down}_exps.weight: (experts, N, K)."""
    return name.startswith("blk.") and name.endswith(_EXPERT_WEIGHT_SUFFIXES)


def is_router_weight(name: str) -> bool:
    """True for an MoE router, blk.N.ffn_gate_inp.weight (experts x d_model), which stays float32."""
    return name.startswith("blk.") and name.endswith(".ffn_gate_inp.weight")


def is_linear_weight(name: str) -> bool:
    """True for the GGUF tensors that are Linear weights: blk.N.attn_*/ffn_* matrices and output.weight."""
    return name == "output.weight" or (name.startswith("blk.") and name.endswith(_LINEAR_WEIGHT_SUFFIXES))


def cast_linear_weights_to_mxfp4(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The MXFP4 recipe: a new dict with every Linear weight (float32 or BF16, see is_linear_weight) cast
    to MXFP4 blocks, named as before, and every other array passed through unchanged."""
    return {name: cast_to_mxfp4(array, name) if is_linear_weight(name) else array for name, array in weights.items()}
