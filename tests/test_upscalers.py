"""Upscalers: every family loads from its real on-disk format through one interface, tiles
seamlessly, returns exactly the requested size, and fails loudly on bad output."""

from __future__ import annotations

import dataclasses
import gc
import os
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from shared.jobspec import target_size
from worker.demo_upscalers import DEMO_AURA_SR, DEMO_ESRGAN, DEMO_REALESRGAN, DEMO_UPSCALERS
from worker.upscalers import UpscaleError, Upscaler, load_upscaler, upscale

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# name -> (family, scale, module class, where the class comes from)
EXPECTED = {
    DEMO_ESRGAN: ("ESRGAN", 4, "RRDBNet", "spandrel"),
    DEMO_REALESRGAN: ("RealESRGAN Compact", 2, "SRVGGNetCompact", "spandrel"),
    DEMO_AURA_SR: ("AuraSR", 4, "UnetUpsampler", "aura_sr"),
}
NAMES = list(EXPECTED)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models run many small ops: one thread is faster, and steady on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def upscaler_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("upscalers")
    for name, build in DEMO_UPSCALERS.items():
        build(root / name)
    return root


@pytest.fixture(scope="module")
def loaded(upscaler_dir) -> dict[str, Upscaler]:
    return {name: load_upscaler(upscaler_dir / name) for name in NAMES}


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth gradient with some noise: like a photo, and different at every pixel."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([x, y, (x + y) / 2], axis=-1)
    return np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1).astype(np.float32)


def _file_tensors(path: Path) -> int:
    """Numbers stored in the model file(s) on disk."""
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    return sum(t.numel() for file in files for t in load_file(file).values())


# -- loading -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_demo_model_loads_as_built(name, upscaler_dir, loaded):
    family, scale, module_class, package = EXPECTED[name]
    up = loaded[name]
    assert (up.family, up.scale) == (family, scale)
    assert type(up.model).__name__ == module_class
    assert type(up.model).__module__.split(".")[0] == package
    path = upscaler_dir / name
    size = path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.iterdir())
    assert size < 1_000_000


def test_spandrel_detects_each_file_format(upscaler_dir):
    from spandrel import ModelLoader

    assert ModelLoader().load_from_file(upscaler_dir / DEMO_ESRGAN).architecture.id == "ESRGAN"
    assert ModelLoader().load_from_file(upscaler_dir / DEMO_REALESRGAN).architecture.id == "Compact"


def test_aura_sr_folder_is_the_packages_format(upscaler_dir, loaded):
    folder = upscaler_dir / DEMO_AURA_SR
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert loaded[DEMO_AURA_SR].fixed_tile == 16


def test_loads_from_the_model_store_listing(tmp_path):
    from shared.modelstore import LocalModelStore

    for name, build in DEMO_UPSCALERS.items():
        build(tmp_path / "upscalers" / name)
    found = {m.name: m for m in LocalModelStore(tmp_path).list("upscaler")}
    assert {n: m.kind for n, m in found.items()} == {
        "demo-aura-sr": "aura-sr",
        "demo-esrgan-x4": "spandrel",
        "demo-realesrgan-x2": "spandrel",
    }
    assert load_upscaler(found["demo-aura-sr"]).family == "AuraSR"  # a ModelInfo works too


def test_missing_upscaler_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_upscaler(tmp_path / "nope.safetensors")


# -- tiling ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [DEMO_ESRGAN, DEMO_REALESRGAN])
def test_tiled_equals_one_big_tile(name, loaded):
    up = loaded[name]
    height, width = 37, 45  # not a multiple of any tile's kept centre
    image = _image(height, width)
    size = (width * up.scale, height * up.scale)

    def run(tile: int, overlap: int) -> np.ndarray:
        return upscale(up, image, *size, tile=tile, overlap=overlap)

    whole = run(width + 2 * 16, 16)  # the whole image in one tile
    tiled = run(64, 16)  # 2x2 tiles of 64 px, each keeping its 32 px centre
    assert tiled.shape == whole.shape == (height * up.scale, width * up.scale, 3)
    assert whole.std() > 0.01  # not a blank image
    assert np.abs(tiled - whole).max() < 1e-4
    # Control: without overlap the seams show, so the comparison above can fail.
    assert np.abs(run(32, 0) - run(width, 0)).max() > 1e-2


def test_aura_sr_is_deterministic_and_tiles_at_its_fixed_size(loaded):
    up = loaded[DEMO_AURA_SR]
    image = _image(20, 27)
    first = upscale(up, image, 108, 80, tile=512)  # tile is the model's, whatever is asked
    again = upscale(up, image, 108, 80)
    assert first.shape == (80, 108, 3)
    np.testing.assert_array_equal(first, again)


# -- sizes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "scale, target",
    [(2, None), (3, None), (4, None), (1.5, None), (None, (91, 61)), (None, (30, 20))],
)
def test_exact_output_size(name, scale, target, loaded):
    height, width = 17, 23  # odd sizes
    if target is None:
        size = target_size(width, height, scale, None, None)
    else:
        size = target_size(width, height, None, *target)
    out = upscale(loaded[name], _image(height, width), *size, tile=64)
    assert out.shape == (size[1], size[0], 3)
    assert out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", NAMES)
def test_different_sizes_in_a_row_on_one_loaded_upscaler(name, loaded):
    """Seed bug 002: a model kept from one size must not break, or corrupt, the next."""
    up = loaded[name]
    small, large = _image(17, 23, seed=1), _image(31, 40, seed=2)
    first = upscale(up, small, 46, 34, tile=48)
    second = upscale(up, large, 101, 77, tile=48)
    assert first.shape == (34, 46, 3)
    assert second.shape == (77, 101, 3)
    np.testing.assert_allclose(upscale(up, small, 46, 34, tile=48), first, atol=1e-6)


def test_model_passes_repeat_until_the_target_is_covered(loaded):
    up = loaded[DEMO_REALESRGAN]  # x2
    calls: list[tuple[int, ...]] = []
    counting = dataclasses.replace(up, forward=lambda x: calls.append(x.shape) or up.forward(x))
    out = upscale(counting, _image(13, 14), 56, 52, tile=32, overlap=4)  # x4: two passes
    assert out.shape == (52, 56, 3)
    assert set(calls) == {(1, 3, 32, 32)}  # every tile has the same shape
    assert len(calls) == 1 + 4  # 14x13 fits one tile's 24 px centre; then 28x26 needs 2x2


def test_progress_is_reported_after_every_tile_and_can_stop_the_upscale(loaded):
    up = loaded[DEMO_REALESRGAN]  # x2, asked for x4: two passes of 1 and 4 tiles
    seen: list[float] = []
    upscale(up, _image(13, 14), 56, 52, tile=32, overlap=4, progress=seen.append)
    assert seen == [0.5, 0.625, 0.75, 0.875, 1.0]

    class Stop(Exception):
        pass

    def cancel(fraction: float) -> None:
        if fraction > 0.5:
            raise Stop  # what a canceled job's progress callback does

    tiles: list[int] = []
    counting = dataclasses.replace(up, forward=lambda x: tiles.append(1) or up.forward(x))
    with pytest.raises(Stop):
        upscale(counting, _image(13, 14), 56, 52, tile=32, overlap=4, progress=cancel)
    assert len(tiles) == 2  # stopped after the first tile of the second pass


def test_target_size():
    assert target_size(23, 17, 2, None, None) == (46, 34)
    assert target_size(23, 17, 1.5, None, None) == (34, 26)  # 34.5 -> 34, 25.5 -> 26
    assert target_size(23, 17, None, 100, 50) == (100, 50)
    assert target_size(200, 100, None, 50, None) == (50, 25)  # aspect ratio kept
    assert target_size(200, 100, None, None, 50) == (100, 50)
    for bad in [(None, None, None), (2, 100, None), (0, None, None), (None, 0, 10)]:
        with pytest.raises(ValueError):
            target_size(23, 17, *bad)


# -- failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_nan_weights_raise_never_return(name, upscaler_dir):
    up = load_upscaler(upscaler_dir / name)
    with torch.no_grad():
        for p in up.model.parameters():
            p.fill_(float("nan"))
    with pytest.raises(UpscaleError, match="NaN"):
        upscale(up, _image(17, 23), 46, 34, tile=32)


def test_wrong_output_size_raises(loaded):
    lying = dataclasses.replace(loaded[DEMO_REALESRGAN], scale=3)  # the model gives x2
    with pytest.raises(UpscaleError, match="shape"):
        upscale(lying, _image(17, 23), 69, 51, tile=32)


def test_bad_input_is_rejected(loaded):
    up = loaded[DEMO_REALESRGAN]
    with pytest.raises(ValueError):
        upscale(up, np.zeros((8, 8), np.float32), 16, 16)
    with pytest.raises(ValueError):
        upscale(up, _image(8, 8), 0, 16)


# -- one unload path ---------------------------------------------------------------------------


def _measure(model: torch.nn.Module) -> int:
    """What a cache sees: the weights reachable through `modules()`, nothing family-specific."""
    return sum(
        t.numel() for m in model.modules() for t in [*m.parameters(False), *m.buffers(False)]
    )


@pytest.mark.parametrize("name", NAMES)
def test_same_measure_and_unload_path_for_every_family(name, upscaler_dir):
    up = load_upscaler(upscaler_dir / name)
    assert isinstance(up.model, torch.nn.Module)
    assert _measure(up.model) == _file_tensors(upscaler_dir / name)  # every weight on disk
    ref = weakref.ref(up.model)
    del up
    gc.collect()
    assert ref() is None  # nothing else holds the weights: dropping the Upscaler frees them
