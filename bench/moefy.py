"""MoEfication: a dense qwen2 checkpoint (Qwen2.5-Coder) turned into a qwen2moe GGUF file with real,
skewed expert use, and its perplexity by the number of experts each token runs.

    python3 bench/run.py moefy [--models qwen2.5-coder-1.5b,qwen2.5-coder-0.5b] [--experts 16] [--used 4]
                               [--tokens 4096] [--window 512] [--threads N] [--out FILE]

Each layer's FFN intermediate neurons (d_ff of them) are split into an always-on shared expert (the
--shared-width neurons of largest mean contribution |act(g.h) (u.h)| * |down column|) and E routed experts
of (d_ff - shared) / E neurons: clustered by balanced k-means on the neurons' contributions over the
calibration tokens (neurons that fire together land together), or contiguous (in index order, the
baseline). A router per layer is fitted by ridge least squares from the FFN input h to the log of each
expert's output norm; its held-out top-k recall against the oracle (the k experts of
largest true output norm) is reported. Calibration: FFN inputs from mlspecqd.engine.reference_model's
float32 forward over wiki text after the tokens perplexity is measured on.

The file sums the chosen experts unweighted, as the dense FFN sums its neurons, so that k = E is the dense
model up to float32 summation order: routing weights are renormalised over the chosen experts and scaled
by k ({arch}.expert_weights_norm, {arch}.expert_weights_scale), and the router is scaled by a power of two
(which keeps its ranking exactly) so small that every softmax term is exp(0) = 1 in float32, making each
weight 1 (exactly, for E and k powers of two). The shared expert's gate vector is zero, sigmoid(0) = 1/2,
and its down weights are doubled (exact in BF16).

Perplexity is bench/perplexity.py's on the first --tokens tokens of the wiki text, for the dense model and
k = E, E/2, ..., 1 (the cached E, --used file loaded once, k changed on its arrays; the contiguous
baseline at k = E and --used only), with the expert-use skew: the share of routed rows taken by the most
used quarter of the experts, per layer, averaged.
Prints JSON (also written to bench/results/moefy.json unless --out says otherwise).

Other benchmarks take a file with `moefied_model_file(model, experts, used) -> Path`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType

from bench import RESULTS
from bench.corpora import text
from bench.machine import describe_machine
from bench.perplexity import negative_log_likelihood
from mlspecqd import _native, hub
from mlspecqd.engine import reference_model
from mlspecqd.engine.model import Model
from mlspecqd.gguf import GGUFFile, ModelSpec, open_gguf
from mlspecqd.tokenizer import Tokenizer

SOURCE_ARCHITECTURE = "qwen2"
ARCHITECTURE = "qwen2moe"
# An expert's width is the K of its down product: MXFP4 blocks hold 32 values of K.
WIDTH_MULTIPLE = 32
SHARED_WIDTH = 768
CLUSTERINGS = ("kmeans", "contiguous")
# Calibration and held-out router text start this many tokens into the wiki text, after the perplexity text.
CALIBRATION_START = 8192
CALIBRATION_TOKENS = 4096
HELD_OUT_TOKENS = 1024
WINDOW = 512
# Router logits are scaled to at most this magnitude on the calibration text: a softmax term exp(x - max)
# with |x - max| < 2^-25 is 1 in float32, so text with logits up to 2^5 times larger still weighs 1.
ROUTER_LOGIT_BOUND = 2.0**-30
KMEANS_ITERATIONS = 12
KMEANS_TOKENS = 1024  # calibration tokens whose contributions are the k-means features
RIDGE = 1.0  # ridge penalty, relative to the mean diagonal of H^T H


class MoefyError(ValueError):
    """Arguments that cannot make a MoEfied model: widths that do not divide, k outside [1, E], a source
    model that is not a dense qwen2."""


@dataclass(frozen=True)
class NeuronSplit:
    """One layer's partition of the d_ff neurons: the shared expert's and each routed expert's (E x F)."""

    shared: np.ndarray
    experts: np.ndarray


@dataclass
class Calibration:
    """Each layer's FFN inputs (tokens x d_model, float32) on the calibration and the held-out text."""

    fit: list[np.ndarray]
    held_out: list[np.ndarray]


def expert_width(d_ff: int, shared_width: int, experts: int, used: int) -> int:
    """The routed experts' width F; a MoefyError unless d_ff = shared + E F with F and shared multiples of 32."""
    if experts < 1 or not 1 <= used <= experts:
        raise MoefyError(f"experts used per token must be in [1, experts]: got {used} of {experts}")
    if not 0 < shared_width < d_ff or shared_width % WIDTH_MULTIPLE:
        raise MoefyError(f"shared width {shared_width} must be a positive multiple of {WIDTH_MULTIPLE} "
                         f"below d_ff {d_ff}")
    routed = d_ff - shared_width
    if routed % experts or (routed // experts) % WIDTH_MULTIPLE:
        raise MoefyError(f"d_ff {d_ff} - shared {shared_width} = {routed} does not split into {experts} experts "
                         f"of a multiple of {WIDTH_MULTIPLE} neurons")
    return routed // experts


def source_tensors(source: GGUFFile) -> dict[str, np.ndarray]:
    """The dense model's tensors as the native model holds them: matrices BF16 bits (row-major), vectors float32."""
    if source.spec.architecture != SOURCE_ARCHITECTURE or source.spec.is_moe:
        raise MoefyError(f"{source.path}: a dense {SOURCE_ARCHITECTURE} model is needed, "
                         f"got {source.spec.architecture}")
    return {name: source.tensor_bf16(name) if len(info.shape) >= 2
            else source.tensor_f32(name).reshape(info.shape) for name, info in source.tensors.items()}


def ffn_inputs(spec: ModelSpec, tensors: dict[str, np.ndarray], tokens: np.ndarray, window: int) -> list[np.ndarray]:
    """Each layer's FFN input over `tokens`, in windows that each start at position 0 (float32 reference forward)."""
    per_window = []
    for begin in range(0, len(tokens), window):
        inputs: list[np.ndarray] = []
        reference_model.forward(spec, tensors, tokens[begin:begin + window], ffn_inputs=inputs, dtype=np.float32)
        per_window.append(inputs)
    return [np.concatenate([inputs[layer] for inputs in per_window]) for layer in range(spec.n_layers)]


def calibrate(spec: ModelSpec, tensors: dict[str, np.ndarray], fit_tokens: np.ndarray, held_out_tokens: np.ndarray,
              window: int = WINDOW) -> Calibration:
    fit = ffn_inputs(spec, tensors, fit_tokens, window)
    return Calibration(fit, ffn_inputs(spec, tensors, held_out_tokens, window))


def layer_weights(tensors: dict[str, np.ndarray], layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Layer `layer`'s FFN gate (d_ff x d), up (d_ff x d) and down (d x d_ff) as float32."""
    return tuple(reference_model.bf16_bits_to_float32(tensors[f"blk.{layer}.ffn_{name}.weight"])
                 for name in ("gate", "up", "down"))


def neuron_activations(h: np.ndarray, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """act(h G^T) * (h U^T): the FFN's intermediate values, tokens x d_ff."""
    return reference_model.silu(h @ gate.T) * (h @ up.T)


def balanced_kmeans(features: np.ndarray, clusters: int, seed: int, iterations: int = KMEANS_ITERATIONS) -> np.ndarray:
    """Each row's cluster (rows / clusters rows each) by spherical k-means whose assignment step fills the
    clusters greedily: rows in order of how much they prefer their best cluster, each to its most similar
    cluster with room."""
    n = len(features)
    size = n // clusters
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-30)
    rng = np.random.default_rng(seed)
    centroids = unit[rng.choice(n, clusters, replace=False)]
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(iterations):
        similarity = unit @ centroids.T
        preference = np.argsort(-similarity, axis=1)
        ranked = np.take_along_axis(similarity, preference, axis=1)
        room = np.full(clusters, size)
        for row in np.argsort(-(ranked[:, 0] - ranked[:, 1]), kind="stable"):
            cluster = next(c for c in preference[row] if room[c] > 0)
            labels[row] = cluster
            room[cluster] -= 1
        centroids = np.stack([unit[labels == c].mean(axis=0) for c in range(clusters)])
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-30)
    return labels


def split_neurons(contributions: np.ndarray, shared_width: int, experts: int, clustering: str,
                  seed: int = 0) -> NeuronSplit:
    """The partition of the neurons (columns of `contributions`, tokens x d_ff: |activation| times the
    neuron's down-column norm) into the shared expert (largest mean contribution) and E routed experts."""
    if clustering not in CLUSTERINGS:
        raise MoefyError(f"clustering '{clustering}' is not one of {', '.join(CLUSTERINGS)}")
    d_ff = contributions.shape[1]
    width = expert_width(d_ff, shared_width, experts, 1)
    shared = np.sort(np.argsort(-contributions.mean(axis=0), kind="stable")[:shared_width])
    routed = np.setdiff1d(np.arange(d_ff), shared)
    if clustering == "contiguous":
        return NeuronSplit(shared, routed.reshape(experts, width))
    labels = balanced_kmeans(contributions[:KMEANS_TOKENS, routed].T, experts, seed)
    return NeuronSplit(shared, np.stack([routed[labels == e] for e in range(experts)]))


def expert_output_norms(activations: np.ndarray, down: np.ndarray, split: NeuronSplit) -> np.ndarray:
    """tokens x E: the norm of each routed expert's output."""
    return np.stack([np.linalg.norm(activations[:, neurons] @ down[:, neurons].T, axis=1) for neurons in split.experts],
                    axis=1)


def router_targets(norms: np.ndarray) -> np.ndarray:
    """What the router regresses on: the log of each expert's output norm (plus a millionth of the mean
    norm, so that a silent expert stays finite)."""
    return np.log(norms + 1e-6 * norms.mean())


def fit_router(h: np.ndarray, targets: np.ndarray, ridge: float = RIDGE) -> np.ndarray:
    """E x d_model: ridge least squares from the FFN inputs h (tokens x d_model) to the targets (tokens x E)."""
    x = h.astype(np.float64)
    gram = x.T @ x
    gram[np.diag_indices_from(gram)] += ridge * np.trace(gram) / len(gram)
    return np.linalg.solve(gram, x.T @ targets.astype(np.float64)).T


def top_k_recall(predicted: np.ndarray, oracle: np.ndarray, k: int) -> float:
    """The mean share of each row's k largest `oracle` columns among its k largest `predicted` ones."""
    chosen = np.argsort(-predicted, axis=1, kind="stable")[:, :k]
    best = np.argsort(-oracle, axis=1, kind="stable")[:, :k]
    return float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(chosen, best)]))


def scaled_router(router: np.ndarray, h: np.ndarray) -> np.ndarray:
    """The router (float32) times the power of two that brings its largest logit on h to at most
    ROUTER_LOGIT_BOUND; the ranking of every row's logits stays exactly as it was."""
    largest = float(np.abs(h.astype(np.float64) @ router.T).max())
    exponent = math.floor(math.log2(ROUTER_LOGIT_BOUND / largest)) if largest > 0 else 0
    return np.ldexp(router, exponent).astype(np.float32)


def doubled_bf16(bits: np.ndarray) -> np.ndarray:
    """BF16 bits of twice the values (exact: only the exponent changes)."""
    return ((reference_model.bf16_bits_to_float32(bits) * 2).view(np.uint32) >> 16).astype(np.uint16)


def moefy_layer(tensors: dict[str, np.ndarray], layer: int, calibration: Calibration, shared_width: int,
                experts: int, used: int, clustering: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One layer's qwen2moe FFN tensors (by GGUF name) and its router statistics."""
    block = f"blk.{layer}."
    gate, up, down = layer_weights(tensors, layer)
    fit, held_out = calibration.fit[layer], calibration.held_out[layer]
    activations = neuron_activations(fit, gate, up)
    down_norms = np.linalg.norm(down, axis=0)
    split = split_neurons(np.abs(activations) * down_norms, shared_width, experts, clustering, seed=layer)
    fit_norms = expert_output_norms(activations, down, split)
    router = fit_router(fit, router_targets(fit_norms))
    held_out_norms = expert_output_norms(neuron_activations(held_out, gate, up), down, split)
    statistics = {"layer": layer,
                  "held_out_recall": top_k_recall(held_out.astype(np.float64) @ router.T, held_out_norms, used),
                  "fit_recall": top_k_recall(fit.astype(np.float64) @ router.T, fit_norms, used)}

    def rows(name: str, neurons: np.ndarray) -> np.ndarray:
        return tensors[block + f"ffn_{name}.weight"][neurons]

    def columns(neurons: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(tensors[block + "ffn_down.weight"][:, neurons])

    out = {
        block + "ffn_gate_inp.weight": scaled_router(router, np.concatenate([fit, held_out])),
        block + "ffn_gate_exps.weight": np.stack([rows("gate", neurons) for neurons in split.experts]),
        block + "ffn_up_exps.weight": np.stack([rows("up", neurons) for neurons in split.experts]),
        block + "ffn_down_exps.weight": np.stack([columns(neurons) for neurons in split.experts]),
        block + "ffn_gate_inp_shexp.weight": np.zeros(len(gate[0]), dtype=np.float32),
        block + "ffn_gate_shexp.weight": rows("gate", split.shared),
        block + "ffn_up_shexp.weight": rows("up", split.shared),
        block + "ffn_down_shexp.weight": doubled_bf16(columns(split.shared)),
    }
    return out, statistics


def _copy_metadata(writer: gguf.GGUFWriter, source_path: Path) -> None:
    """The source's metadata with qwen2.* keys renamed to qwen2moe.* (general.architecture is the writer's)."""
    reader = gguf.GGUFReader(source_path)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue
        if key.startswith(SOURCE_ARCHITECTURE + "."):
            key = ARCHITECTURE + key[len(SOURCE_ARCHITECTURE):]
        array = field.types[0] == gguf.GGUFValueType.ARRAY
        writer.add_key_value(key, field.contents(), field.types[0], field.types[-1] if array else None)


def moefy(source_path: Path, out_path: Path, experts: int, used: int, calibration: Calibration | None = None,
          shared_width: int = SHARED_WIDTH, clustering: str = "kmeans",
          calibration_tokens: np.ndarray | None = None, held_out_tokens: np.ndarray | None = None) -> dict[str, Any]:
    """Writes the MoEfied model of the dense qwen2 GGUF `source_path` to `out_path` (under a temporary name,
    renamed when whole) and returns its report (router recall per layer). Calibrates on the given token
    arrays unless a Calibration is given."""
    with open_gguf(source_path) as source:
        spec = source.spec
        tensors = source_tensors(source)
    width = expert_width(spec.d_ff, shared_width, experts, used)
    if clustering not in CLUSTERINGS:
        raise MoefyError(f"clustering '{clustering}' is not one of {', '.join(CLUSTERINGS)}")
    if calibration is None:
        if calibration_tokens is None or held_out_tokens is None:
            raise MoefyError("moefy needs a Calibration or calibration and held-out tokens")
        calibration = calibrate(spec, tensors, calibration_tokens, held_out_tokens)
    started = time.perf_counter()
    layers = []
    partial = out_path.with_name(out_path.name + ".partial")
    writer = gguf.GGUFWriter(partial, ARCHITECTURE)
    _copy_metadata(writer, source_path)
    writer.add_expert_count(experts)
    writer.add_expert_used_count(used)
    writer.add_expert_feed_forward_length(width)
    writer.add_expert_shared_feed_forward_length(shared_width)
    writer.add_bool(f"{ARCHITECTURE}.expert_weights_norm", True)
    writer.add_float32(f"{ARCHITECTURE}.expert_weights_scale", float(used))
    ffn = {f"blk.{layer}.ffn_{name}.weight" for layer in range(spec.n_layers) for name in ("gate", "up", "down")}
    output: dict[str, np.ndarray] = {name: array for name, array in tensors.items() if name not in ffn}
    for layer in range(spec.n_layers):
        layer_tensors, statistics = moefy_layer(tensors, layer, calibration, shared_width, experts, used, clustering)
        output.update(layer_tensors)
        layers.append(statistics)
        for name in ("gate", "up", "down"):  # the dense FFN is now in the experts: one copy in memory, not two
            del tensors[f"blk.{layer}.ffn_{name}.weight"]
    for name, array in output.items():
        ggml_type = GGMLQuantizationType.BF16 if array.dtype == np.uint16 else GGMLQuantizationType.F32
        writer.add_tensor(name, array, raw_shape=array.shape, raw_dtype=ggml_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(out_path)
    return {"source": str(source_path), "file": str(out_path), "experts": experts, "used": used,
            "shared_width": shared_width, "expert_width": width, "clustering": clustering,
            "calibration_tokens": len(calibration.fit[0]), "held_out_tokens": len(calibration.held_out[0]),
            "held_out_recall": float(np.mean([s["held_out_recall"] for s in layers])),
            "fit_recall": float(np.mean([s["fit_recall"] for s in layers])),
            "random_recall": used / experts, "seconds": time.perf_counter() - started, "layers": layers}


def wiki_tokens(model: str) -> np.ndarray:
    return np.array(Tokenizer.from_gguf(hub.resolve(model)).encode(text("wiki"), add_special=False))


def calibration_for(model: str, window: int = WINDOW) -> Calibration:
    """The named model's FFN inputs on the wiki calibration and held-out text."""
    tokens = wiki_tokens(model)
    held_out_start = CALIBRATION_START + CALIBRATION_TOKENS
    with open_gguf(hub.resolve(model)) as source:
        spec, tensors = source.spec, source_tensors(source)
    return calibrate(spec, tensors, tokens[CALIBRATION_START:held_out_start],
                     tokens[held_out_start:held_out_start + HELD_OUT_TOKENS], window)


def moefied_path(model: str, experts: int, used: int, clustering: str = "kmeans") -> Path:
    suffix = "" if clustering == "kmeans" else f"-{clustering}"
    return hub.cache_dir() / f"bench-moefied-{model}-e{experts}-k{used}{suffix}.gguf"


def moefied_model_file(model: str = "qwen2.5-coder-1.5b", experts: int = 16, used: int = 4,
                       clustering: str = "kmeans", calibration: Calibration | None = None) -> Path:
    """The cached MoEfied file of a named dense qwen2 model (hub name), built when absent; its report is
    the .json beside it."""
    path = moefied_path(model, experts, used, clustering)
    if not path.exists():
        report = moefy(hub.resolve(model), path, experts, used, calibration or calibration_for(model),
                       clustering=clustering)
        path.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    return path


def expert_use_skew(expert_rows: np.ndarray) -> float:
    """The share of routed rows taken by the most used quarter of the experts, per layer, averaged."""
    quarter = max(1, expert_rows.shape[1] // 4)
    ranked = -np.sort(-expert_rows, axis=1)
    return float(np.mean(ranked[:, :quarter].sum(axis=1) / ranked.sum(axis=1)))


def used_counts(experts: int) -> list[int]:
    """E, E/2, E/4, ..., 1."""
    return [experts >> shift for shift in range(experts.bit_length()) if experts >> shift]


def perplexity(model: Model, tokens: np.ndarray, window: int) -> dict[str, Any]:
    started = time.perf_counter()
    total, count = negative_log_likelihood(model, tokens, window)
    return {"perplexity": math.exp(total / count), "tokens_scored": count, "seconds": time.perf_counter() - started}


def perplexity_by_k(path: Path, tokens: np.ndarray, window: int, counts: Sequence[int]) -> list[dict[str, Any]]:
    """Perplexity of the MoEfied file with each token running k experts, for each k of `counts`, and the
    expert-use skew where k < E."""
    rows = []
    with Model.load(path, context_length=window) as moe:
        for used in counts:
            spec = dataclasses.replace(moe.spec, n_experts_used=used, expert_weights_scale=float(used))
            with Model.from_arrays(spec, moe.tensors, context_length=window) as variant:
                row = {"used": used, **perplexity(variant, tokens, window)}
                if used < moe.spec.n_experts:
                    row["expert_use_skew"] = expert_use_skew(variant.expert_rows())
                rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="qwen2.5-coder-1.5b,qwen2.5-coder-0.5b")
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--used", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=2048, help="perplexity tokens (the start of the wiki text)")
    parser.add_argument("--window", type=int, default=WINDOW)
    parser.add_argument("--threads", type=int, default=0, help="native threads (default: the module's own count)")
    parser.add_argument("--out", type=Path, default=RESULTS / "moefy.json")
    args = parser.parse_args(argv)
    if args.threads:
        _native.set_num_threads(args.threads)
    if args.tokens > CALIBRATION_START:
        raise MoefyError(f"--tokens {args.tokens} would overlap the calibration text at {CALIBRATION_START}")
    results = []
    for model in args.models.split(","):
        calibration = None
        builds = {}
        for clustering in CLUSTERINGS:
            path = moefied_path(model, args.experts, args.used, clustering)
            if not path.exists():
                calibration = calibration or calibration_for(model, args.window)
            moefied_model_file(model, args.experts, args.used, clustering, calibration)
            builds[clustering] = json.loads(path.with_suffix(".json").read_text())
        del calibration
        tokens = wiki_tokens(model)[: args.tokens]
        with Model.load(hub.resolve(model), context_length=args.window) as dense:
            dense_row = perplexity(dense, tokens, args.window)
        # The contiguous baseline at all experts and at the file's k only.
        counts = {"kmeans": used_counts(args.experts), "contiguous": [args.experts, args.used]}
        by_k = {clustering: perplexity_by_k(Path(build["file"]), tokens, args.window, counts[clustering])
                for clustering, build in builds.items()}
        for rows in by_k.values():
            for row in rows:
                row["vs_dense"] = row["perplexity"] / dense_row["perplexity"]
        results.append({"model": model, "builds": builds, "dense": dense_row, "perplexity": by_k})
    report = {"text": "wiki.utf8 (exllamav2 0.3.2)", "window": args.window, "machine": describe_machine(),
              "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    json.dump(report, sys.stdout, indent=2)
    print("\n| model | clustering | router recall (held-out) | k | perplexity | vs dense | expert-use skew |")
    print("|---|---|---|---|---|---|---|")
    for result in results:
        print(f"| {result['model']} | dense | | | {result['dense']['perplexity']:.3f} | 1 | |")
        for clustering, rows in result["perplexity"].items():
            recall = result["builds"][clustering]["held_out_recall"]
            for row in rows:
                skew = f"{row['expert_use_skew']:.3f}" if "expert_use_skew" in row else ""
                print(f"| {result['model']} | {clustering} | {recall:.3f} | {row['used']} | {row['perplexity']:.3f} "
                      f"| {row['vs_dense']:.4f}x | {skew} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
