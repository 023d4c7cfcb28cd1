"""hybrids.io: level -> intensity map, grid layout, sample writers, JSON helpers."""
from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image

from hybrids.io import (
    append_jsonl,
    image_grid,
    levels_to_uint8,
    read_jsonl,
    save_samples,
    to_jsonable,
    truncate_jsonl,
    write_json,
)


@settings(max_examples=20, deadline=None)
@given(num_levels=st.integers(2, 256), seed=st.integers(0, 100))
def test_levels_map_to_full_8bit_range(num_levels, seed):
    k = torch.randint(0, num_levels, (50,), generator=torch.Generator().manual_seed(seed))
    k[0], k[1] = 0, num_levels - 1
    u8 = torch.from_numpy(levels_to_uint8(k, num_levels)).to(torch.int64)
    assert u8[0] == 0 and u8[1] == 255
    # within half a grey level of 255 k / (K - 1), and monotone in k
    assert ((u8.double() - 255.0 * k.double() / (num_levels - 1)).abs() <= 0.5).all()
    order = torch.argsort(k)
    assert (u8[order].diff() >= 0).all()


def test_image_grid_places_images_row_major_with_padding():
    k = torch.arange(5).reshape(5, 1, 1, 1).expand(5, 1, 2, 3)  # image i is constant level i
    grid = image_grid(k, num_levels=5, nrow=3, padding=1)
    assert grid.shape == (2 * 3 + 1, 3 * 4 + 1, 1)
    for i in range(5):
        r, c = divmod(i, 3)
        block = grid[1 + 3 * r : 1 + 3 * r + 2, 1 + 4 * c : 1 + 4 * c + 3, 0]
        assert (block == round(255 * i / 4)).all()
    assert (grid[0] == 0).all() and (grid[:, 0] == 0).all()  # border
    assert (grid[4:6, 9:12] == 0).all()  # the empty sixth slot


def test_save_samples_writes_images_and_scatter(tmp_path):
    out = save_samples(tmp_path, "s", {"img": torch.randint(0, 17, (4, 3, 8, 8)), "pts": torch.randn(30, 2)}, 17)
    assert [p.name for p in out] == ["s_img.png", "s_pts.png"]
    with Image.open(out[0]) as im:
        assert im.mode == "RGB"
    with pytest.raises(TypeError, match="expected int64 images"):
        save_samples(tmp_path, "s", {"bad": torch.randn(4, 1, 8, 8)}, 17)
    with pytest.raises(TypeError, match="dict"):
        save_samples(tmp_path, "s", torch.zeros(3), 17)


def test_json_helpers(tmp_path):
    assert to_jsonable({"a": torch.tensor([1.0, float("nan")]), "b": (1, float("inf"))}) == {
        "a": [1.0, "nan"], "b": [1, "inf"]}
    with pytest.raises(TypeError, match="cannot write"):
        to_jsonable(object())
    write_json(tmp_path / "r.json", {"x": torch.tensor(2.5)})
    assert json.loads((tmp_path / "r.json").read_text()) == {"x": 2.5}
    for step in range(1, 6):
        append_jsonl(tmp_path / "m.jsonl", {"step": step})
    truncate_jsonl(tmp_path / "m.jsonl", lambda r: r["step"] <= 3)
    assert read_jsonl(tmp_path / "m.jsonl") == [{"step": 1}, {"step": 2}, {"step": 3}]
    assert read_jsonl(tmp_path / "absent.jsonl") == []


def test_atomic_write_gives_the_usual_permissions(tmp_path):
    import os
    import stat

    from hybrids.io import atomic_write_text

    mask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "results.json", "{}")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
