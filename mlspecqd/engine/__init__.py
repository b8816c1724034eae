"""The engine: native models loaded from GGUF in BF16 or MXFP4 (model, quant, weight_layout) and
sampling. The speculative cascade (mlspecqd.speculative) runs on it; applications (mlspecqd.apps) on both."""
