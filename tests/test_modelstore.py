"""The model store: `find_model` answers exactly what `list_models` lists, without a listing."""

from pathlib import Path

from shared.modelstore import FAMILIES, find_model, list_models


def test_find_model_agrees_with_the_listing(models_dir: Path):
    listed = list_models(models_dir)
    assert {m.family for m in listed} == set(FAMILIES)
    for model in listed:
        assert find_model(model.name, model.family, models_dir) == model
    # broken-model lists (its folder looks right) and is found: it fails only when loaded.
    assert find_model("broken-model", "checkpoint", models_dir) is not None


def test_find_model_refuses_what_the_listing_would_not_show(models_dir: Path, tmp_path: Path):
    for name in ("", "..", "../checkpoints/demo-sd15", "demo-sd15/unet", ".hidden", "nope"):
        assert find_model(name, "checkpoint", models_dir) is None, name
    assert find_model("demo-sd15", "vae", models_dir) is None  # names are per family
    (tmp_path / "upscalers").mkdir()
    (tmp_path / "upscalers" / "notes.txt").write_text("not a model")
    (tmp_path / "upscalers" / "x4.pth").write_bytes(b"weights")
    assert find_model("notes", "upscaler", tmp_path) is None
    assert find_model("x4", "upscaler", tmp_path).path == tmp_path / "upscalers" / "x4.pth"
