"""mlspecqd: CPU-first LLM inference with multi-level speculative decoding and MXFP4 self-drafts.

    import mlspecqd
    with mlspecqd.load() as llm:          # qwen2.5-coder-1.5b: 0.5B draft -> MXFP4 copy -> BF16 target
        print(llm.generate("def fib(n):", max_tokens=64).text)
"""

from pathlib import Path

try:
    from mlspecqd import _native
except ImportError:
    package_folder = Path(__file__).parent
    if any(package_folder.glob("_native*.so")) or any(package_folder.glob("_native*.pyd")):
        raise  # the module is there but does not load: its own error says why
    raise ImportError(
        f"mlspecqd: {package_folder} is the source tree, which has no built native module; run Python from "
        "another folder to use the installed package (pip install .), or build it here (README, Developer build)"
    ) from None

from mlspecqd.apps.conversation import ChatSession
from mlspecqd.apps.generation import GenerationError, GenerationResult
from mlspecqd.apps.llm import LLM
from mlspecqd.apps.loading import LoadError, load
from mlspecqd.engine.sampling import SamplingParams

__version__ = "0.1.0"

__all__ = ["LLM", "ChatSession", "GenerationError", "GenerationResult", "LoadError", "SamplingParams",
           "__version__", "_native", "load"]
