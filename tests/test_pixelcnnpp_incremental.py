"""Per-pixel cached evaluation of PixelCNN++ / NCPN (hybrids.models.pixelcnnpp_incremental).

* pixel by pixel in raster order, each pixel set after it is asked for (what the sampler does),
  the cached params of every pixel equal the full forward pass (float64, odd and even sizes, 0-2
  resnets, attention, weight norm, NCPN's conditioning); in float32 they agree to rounding;
* after edits anywhere (also before pixels already evaluated) the params asked for are current;
* a raster pass computes every position of every stage exactly once;
* misuse raises.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from hybrids.models.pixelcnnpp import NCPN, PixelCNNpp
from hybrids.models.pixelcnnpp_incremental import STAGES, IncrementalPixelCNN
from hybrids.sdes import VESDE, VPSDE

SHAPES = [(1, 7, 7), (3, 5, 9), (1, 8, 8), (1, 4, 4), (1, 9, 6)]
ATTENTION = [(), ("up",), ("down",), ("up", "down")]


def _model(kind, shape, nr_filters, nr_resnet, attention, weight_norm, seed, dtype=torch.float64):
    kw = dict(num_levels=17, nr_filters=nr_filters, nr_resnet=nr_resnet, nr_logistic_mix=2,
              dropout=0.5, weight_norm=weight_norm)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if kind == "pixelcnnpp":
            model = PixelCNNpp(shape, **kw)
        else:
            sde = VESDE() if kind == "ncpn_ve" else VPSDE()
            model = NCPN(shape, sde=sde, attention=attention, **kw)
    return model.to(dtype).eval()  # dropout 0.5 is inactive in eval mode


def _raster_pass(evaluator, x):
    """Ask for every pixel in raster order, setting it to its value in ``x`` afterwards (what
    ancestral sampling does); returns the params asked for, ``[B, P, H, W]``."""
    _, _, height, width = x.shape
    rows = []
    for r in range(height):
        row = []
        for c in range(width):
            row.append(evaluator.pixel_params(r, c).clone())
            evaluator.set_pixel(r, c, x[:, :, r, c])
        rows.append(torch.stack(row, dim=-1))
    return torch.stack(rows, dim=-2)


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(["pixelcnnpp", "ncpn_vp", "ncpn_ve"]),
    shape=st.sampled_from(SHAPES),
    nr_filters=st.integers(3, 8),
    nr_resnet=st.integers(0, 2),
    attention=st.sampled_from(ATTENTION),
    weight_norm=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_pixel_by_pixel_params_equal_full_pass(kind, shape, nr_filters, nr_resnet, attention,
                                               weight_norm, seed):
    """The central exactness check (float64, 1e-10). Starting from a placeholder image and
    setting each pixel after asking for it, pixel (r, c)'s cached params equal ``model(x)`` at
    (r, c). Catches any wrong window offset or padding, a wrong skip wiring between the up and
    down passes, a lower-resolution position computed before its inputs are complete (or not
    recomputed), an attention key/value computed before its pixel is set or attending to the
    wrong range, a missing conditioning term, and wrongly read weight-normalised weights."""
    model = _model(kind, shape, nr_filters, nr_resnet, attention, weight_norm, seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((2,) + shape, generator=g, dtype=torch.float64) * 2 - 1
    t = torch.rand(2, generator=g, dtype=torch.float64)
    evaluator = IncrementalPixelCNN(model)
    evaluator.reset(torch.zeros_like(x), t)
    cached = _raster_pass(evaluator, x)
    torch.testing.assert_close(cached, model(x, t), rtol=0, atol=1e-10)


@settings(max_examples=15, deadline=None)
@given(
    kind=st.sampled_from(["pixelcnnpp", "ncpn_vp"]),
    shape=st.sampled_from(SHAPES),
    nr_resnet=st.integers(0, 2),
    attention=st.sampled_from(ATTENTION),
    seed=st.integers(0, 2**16),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.floats(0, 1, exclude_max=True),
                             st.floats(0, 1, exclude_max=True), st.booleans()),
                   min_size=1, max_size=6),
)
def test_params_are_current_after_edits_anywhere(kind, shape, nr_resnet, attention, seed, edits):
    """Edits before pixels already evaluated make the evaluator evaluate them again: after each
    edit, the rows (``params``) or the pixel (``pixel_params``) asked for equal the full pass.
    Catches a frontier that is not moved back by ``set_pixel`` (stale params) or moved back too
    little (a position of the edited pixel's successors kept)."""
    model = _model(kind, shape, 5, nr_resnet, attention, False, seed)
    _, height, width = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((2,) + shape, generator=g, dtype=torch.float64) * 2 - 1
    t = torch.rand(2, generator=g, dtype=torch.float64)
    evaluator = IncrementalPixelCNN(model)
    evaluator.reset(x, t)
    torch.testing.assert_close(evaluator.params(), model(x, t), rtol=0, atol=1e-10)
    for u_row, u_col, u_req, whole_rows in edits:
        row, col = int(u_row * height), int(u_col * width)
        value = torch.rand(2, shape[0], generator=g, dtype=torch.float64) * 2 - 1
        x[:, :, row, col] = value
        evaluator.set_pixel(row, col, value)
        full = model(x, t)
        p = int(u_req * height * width)  # any pixel
        if whole_rows:
            r = p // width
            torch.testing.assert_close(evaluator.params(r)[:, :, : r + 1], full[:, :, : r + 1],
                                       rtol=0, atol=1e-10)
        else:
            r, c = divmod(p, width)
            torch.testing.assert_close(evaluator.pixel_params(r, c), full[:, :, r, c],
                                       rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind,attention", [("pixelcnnpp", ()), ("ncpn_vp", ("up", "down"))])
def test_float32_params_agree_to_rounding(kind, attention):
    """float32 (12x12, 16 filters): the GEMMs round differently from the full pass's
    convolutions, by float32 rounding only. Catches a dtype mix-up (e.g. float64 buffers or
    weights in a float32 model) and any error above rounding that float64 tests might not
    exercise."""
    model = _model(kind, (1, 12, 12), 16, 1, attention, False, 3, dtype=torch.float32)
    x = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(0)) * 2 - 1
    t = torch.full((2,), 0.3)
    evaluator = IncrementalPixelCNN(model)
    evaluator.reset(torch.zeros_like(x), t)
    cached = _raster_pass(evaluator, x)
    assert cached.dtype == torch.float32
    torch.testing.assert_close(cached, model(x, t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 7, 7), (1, 8, 8), (1, 6, 11)], ids=str)
def test_raster_pass_computes_each_position_once(shape):
    """Asking for the pixels in raster order computes every position of every stage once: the
    ul stages one position per pixel at full resolution (per 2x2 / 4x4 block below), the u stages
    one row per image row (per 2 / 4 rows below). Catches recomputation (a frontier moved back
    by ``set_pixel`` of the pixel just evaluated) and positions computed at the wrong pixel."""
    model = _model("ncpn_vp", shape, 4, 1, ("up", "down"), False, 1)
    evaluator = IncrementalPixelCNN(model)
    x = torch.rand((1,) + shape, dtype=torch.float64)
    evaluator.reset(torch.zeros_like(x))
    heights = [h for h, _ in evaluator.sizes]
    assert heights == [shape[1], (shape[1] + 1) // 2, ((shape[1] + 1) // 2 + 1) // 2]
    _raster_pass(evaluator, x)
    areas = [h * w for h, w in evaluator.sizes]
    expected = {stage: areas[int(stage.split(".")[0][-1])] for stage in STAGES}
    assert evaluator.positions_computed == expected
    assert evaluator.rows_computed == {s: heights[int(s.split(".")[0][-1])] for s in STAGES}
    evaluator.params()  # everything evaluated and nothing changed: nothing recomputed
    assert evaluator.positions_computed == expected


def test_misuse_raises():
    model = _model("pixelcnnpp", (1, 4, 4), 4, 1, (), False, 0)
    with pytest.raises(TypeError, match="PixelCNNpp or NCPN"):
        IncrementalPixelCNN(torch.nn.Linear(2, 2))
    evaluator = IncrementalPixelCNN(model)
    with pytest.raises(RuntimeError, match="reset"):
        evaluator.params()
    with pytest.raises(RuntimeError, match="reset"):
        evaluator.pixel_params(0, 0)
    with pytest.raises(ValueError, match="expects inputs of shape"):
        evaluator.reset(torch.zeros(1, 1, 5, 4, dtype=torch.float64))
    evaluator.reset(torch.zeros(1, 1, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="up_to_row"):
        evaluator.params(4)
    with pytest.raises(ValueError, match="outside"):
        evaluator.pixel_params(0, 4)
    model.train()
    with pytest.raises(ValueError, match="eval mode"):
        evaluator.reset(torch.zeros(1, 1, 4, 4, dtype=torch.float64))
