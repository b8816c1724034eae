"""Fuzz target: any bytes as a GGUF file, through open_gguf, the model spec, the tokenizer built from
its metadata and the dequantization of its tensors.

    python tests/fuzz/fuzz_gguf_parse.py -max_total_time=600 CORPUS SEEDS

Accepted: a file that opens, or a GGUFError / TokenizerError of one line naming the file.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness

with _harness.instrumented(["mlspecqd.gguf", "mlspecqd.tokenizer"]):
    from mlspecqd.gguf import GGUFError, open_gguf
    from mlspecqd.tokenizer import Tokenizer, TokenizerError

PATH = _harness.SCRATCH / "input.gguf"
# Tensors dequantized per input, smallest first: enough to reach every format without making large
# (valid) inputs slow.
TENSORS_PER_INPUT = 4


def test_one_input(data: bytes) -> None:
    PATH.write_bytes(data)
    try:
        file = open_gguf(PATH)
    except GGUFError as error:
        _harness.check_refusal(error, str(PATH))
        return
    with file:
        for info in file.tensors.values():
            assert info.raw.nbytes <= len(data) and info.n_elements >= 1
        try:
            file.spec  # noqa: B018  (reading it runs every check of the metadata against the tensors)
        except GGUFError as error:
            _harness.check_refusal(error, str(PATH))
        try:
            Tokenizer.from_gguf_metadata(file.metadata)
        except TokenizerError as error:
            _harness.check_refusal(error)
        for name in sorted(file.tensors, key=lambda name: file.tensors[name].raw.nbytes)[:TENSORS_PER_INPUT]:
            info = file.tensors[name]
            try:
                values = file.tensor_f32(name)
            except GGUFError as error:
                _harness.check_refusal(error, str(PATH))
                continue
            assert values.shape == info.shape


if __name__ == "__main__":
    _harness.main(test_one_input)
