"""mlspecqd: CPU-first LLM inference with multi-level speculative decoding and MXFP4 self-drafts.

    import mlspecqd
    with mlspecqd.load() as llm:          # qwen2.5-coder-1.5b: 0.5B draft -> MXFP4 copy -> BF16 target
        print(llm.generate("def fib(n):", max_tokens=64).text)
"""

from mlspecqd import _native
from mlspecqd.conversation import ChatSession
from mlspecqd.generation import GenerationError, GenerationResult
from mlspecqd.llm import LLM
from mlspecqd.loading import LoadError, load
from mlspecqd.sampling import SamplingParams

__version__ = "0.1.0"

__all__ = ["LLM", "ChatSession", "GenerationError", "GenerationResult", "LoadError", "SamplingParams",
           "__version__", "_native", "load"]
