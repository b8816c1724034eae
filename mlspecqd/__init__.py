"""mlspecqd: CPU-first LLM inference with multi-level speculative decoding and MXFP4 self-drafts."""

from mlspecqd import _native

__version__ = "0.1.0"

__all__ = ["__version__", "_native"]
