"""GGUF tokenizers: byte-level BPE (gpt2) and SentencePiece (llama), built from file metadata."""

from mlspecqd.tokenizer.stream import StreamDecoder
from mlspecqd.tokenizer.tokenizer import Tokenizer
from mlspecqd.tokenizer.vocabulary import TokenizerError, TokenType, Vocabulary

__all__ = ["StreamDecoder", "TokenType", "Tokenizer", "TokenizerError", "Vocabulary"]
