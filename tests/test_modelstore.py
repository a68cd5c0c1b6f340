"""The folder model store: `find` answers exactly what `list` lists, without a listing."""

from pathlib import Path

import pytest

from shared.config import Settings
from shared.modelstore import FAMILIES, LocalModelStore, open_model_store


def test_find_agrees_with_the_listing(models_dir: Path):
    store = LocalModelStore(models_dir)
    listed = store.list()
    assert {m.family for m in listed} == set(FAMILIES)
    for model in listed:
        assert store.find(model.name, model.family) == model
    for family in FAMILIES:
        assert store.names(family) == [m.name for m in store.list(family)]
    # broken-model lists (its folder looks right) and is found: it fails only when loaded.
    assert store.find("broken-model", "checkpoint") is not None


def test_find_refuses_what_the_listing_would_not_show(models_dir: Path, tmp_path: Path):
    store = LocalModelStore(models_dir)
    for name in ("", "..", "../checkpoints/demo-sd15", "demo-sd15/unet", ".hidden", "nope"):
        assert store.find(name, "checkpoint") is None, name
    assert store.find("demo-sd15", "vae") is None  # names are per family
    (tmp_path / "upscalers").mkdir()
    (tmp_path / "upscalers" / "notes.txt").write_text("not a model")
    (tmp_path / "upscalers" / "x4.pth").write_bytes(b"weights")
    other = LocalModelStore(tmp_path)
    assert other.find("notes", "upscaler") is None
    assert other.find("x4", "upscaler").path == tmp_path / "upscalers" / "x4.pth"


def test_the_store_follows_the_settings(models_dir: Path):
    store = open_model_store(Settings(models_dir=models_dir))
    assert isinstance(store, LocalModelStore) and store.location == str(models_dir)
    for url in ("file:///models", "s3:///no-bucket", "bucket/prefix"):
        with pytest.raises(ValueError, match="RENDERFARM_MODELS_URL"):
            open_model_store(Settings(models_dir=models_dir, models_url=url))
