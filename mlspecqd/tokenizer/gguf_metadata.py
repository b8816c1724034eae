"""Reading a GGUF file's tokenizer metadata.

Temporary: mlspecqd.gguf.open_gguf(path).metadata will provide this; until then gguf-py's reader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf

from mlspecqd.tokenizer.vocabulary import TokenizerError


def read_tokenizer_metadata(path: str | Path) -> dict[str, Any]:
    """The tokenizer.* keys of a GGUF file as plain Python values."""
    try:
        reader = gguf.GGUFReader(path)
    except FileNotFoundError:
        raise
    except (ValueError, IndexError, OSError) as error:
        raise TokenizerError(f"{path}: not a readable GGUF file ({error})") from None
    return {key: field.contents() for key, field in reader.fields.items() if key.startswith("tokenizer.")}
