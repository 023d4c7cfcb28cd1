"""Row-cached incremental evaluation of PixelCNN++ / NCPN (hybrids.models.pixelcnnpp_incremental).

* after any sequence of pixel edits, the cached params of the rows asked for equal the full
  forward pass (float64, odd and even sizes, attention, weight norm);
* the cache recomputes exactly the stale rows that a request needs, and nothing twice;
* misuse raises.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from hybrids.models.pixelcnnpp import NCPN, PixelCNNpp
from hybrids.models.pixelcnnpp_incremental import STAGES, IncrementalPixelCNN
from hybrids.sdes import VESDE, VPSDE

SHAPES = [(1, 7, 7), (3, 5, 9), (1, 8, 8), (1, 4, 4)]
ATTENTION = [(), ("up",), ("up", "down")]


def _model(kind, shape, nr_filters, nr_resnet, attention, weight_norm, seed):
    kw = dict(num_levels=17, nr_filters=nr_filters, nr_resnet=nr_resnet, nr_logistic_mix=2,
              dropout=0.5, weight_norm=weight_norm)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if kind == "pixelcnnpp":
            model = PixelCNNpp(shape, **kw)
        else:
            sde = VESDE() if kind == "ncpn_ve" else VPSDE()
            model = NCPN(shape, sde=sde, attention=attention, **kw)
    return model.double().eval()  # dropout 0.5 is inactive in eval mode


@settings(max_examples=24, deadline=None)
@given(
    kind=st.sampled_from(["pixelcnnpp", "ncpn_vp", "ncpn_ve"]),
    shape=st.sampled_from(SHAPES),
    nr_filters=st.integers(4, 8),
    nr_resnet=st.integers(0, 2),
    attention=st.sampled_from(ATTENTION),
    weight_norm=st.booleans(),
    seed=st.integers(0, 2**16),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.floats(0, 1, exclude_max=True),
                             st.floats(0, 1, exclude_max=True)), min_size=1, max_size=6),
)
def test_cached_params_equal_full_pass(kind, shape, nr_filters, nr_resnet, attention, weight_norm,
                                       seed, edits):
    model = _model(kind, shape, nr_filters, nr_resnet, attention, weight_norm, seed)
    _, height, width = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((2,) + shape, generator=g, dtype=torch.float64) * 2 - 1
    t = torch.rand(2, generator=g, dtype=torch.float64)
    evaluator = IncrementalPixelCNN(model)
    evaluator.reset(x, t)
    torch.testing.assert_close(evaluator.params(), model(x, t), rtol=0, atol=1e-10)
    for u_row, u_col, u_req in edits:
        row, col = int(u_row * height), int(u_col * width)
        value = torch.rand(2, shape[0], generator=g, dtype=torch.float64) * 2 - 1
        x[:, :, row, col] = value
        evaluator.set_pixel(row, col, value)
        up_to = row + int(u_req * (height - row))  # any row >= the edited one
        full = model(x, t)
        cached = evaluator.params(up_to)
        assert cached.shape == full.shape
        torch.testing.assert_close(cached[:, :, : up_to + 1], full[:, :, : up_to + 1], rtol=0, atol=1e-10)
    assert torch.equal(evaluator.x, x)


def test_edit_in_place_then_invalidate():
    model = _model("ncpn_vp", (3, 5, 9), 6, 1, ("up", "down"), True, 0)
    x = torch.rand(2, 3, 5, 9, dtype=torch.float64) * 2 - 1
    evaluator = IncrementalPixelCNN(model)
    evaluator.reset(x, 0.3)
    evaluator.params()
    evaluator.x[:, :, 3:] = 0.25  # rows 3.. changed behind the evaluator's back
    x[:, :, 3:] = 0.25
    evaluator.invalidate_from_row(3)
    torch.testing.assert_close(evaluator.params(), model(x, torch.full((2,), 0.3, dtype=torch.float64)),
                               rtol=0, atol=1e-10)


def _first_stale(row: int, level: int, stream: str) -> int:
    """First row of a map at ``level`` that depends on input row ``row``: ul maps see row R at
    full resolution, u maps (down-shifted) only from row R + 1; each stride-2 step halves."""
    first = row if stream == "ul" else row + 1
    for _ in range(level):
        first = (first + 1) // 2
    return first


@pytest.mark.parametrize("shape", [(1, 7, 7), (1, 8, 8)], ids=str)
def test_cache_computes_each_stale_row_once(shape):
    model = _model("ncpn_vp", shape, 4, 1, ("up", "down"), False, 1)
    evaluator = IncrementalPixelCNN(model)
    x = torch.zeros((1,) + shape, dtype=torch.float64)
    evaluator.reset(x)
    heights = [h for h, _ in evaluator.sizes]
    assert heights == [shape[1], (shape[1] + 1) // 2, ((shape[1] + 1) // 2 + 1) // 2]

    evaluator.params(0)  # row 0 needs row 0 of every stage, nothing else
    assert evaluator.rows_computed == dict.fromkeys(STAGES, 1)
    evaluator.params()
    full = {stage: heights[int(stage.split(".")[0][-1])] for stage in STAGES}
    assert evaluator.rows_computed == full
    evaluator.params()  # nothing changed: nothing recomputed
    evaluator.params(3)
    assert evaluator.rows_computed == full

    row = 4
    evaluator.set_pixel(row, 2, torch.ones(1, 1, dtype=torch.float64))
    evaluator.params()
    for stage in STAGES:
        block, stream = stage.split(".")
        level = int(block[-1])
        recomputed = evaluator.rows_computed[stage] - full[stage]
        # Exactly the rows from the first one that depends on input row 4: rows above are kept.
        assert recomputed == heights[level] - _first_stale(row, level, stream), stage
    x[:, :, row, 2] = 1.0
    torch.testing.assert_close(evaluator.params(), model(x), rtol=0, atol=1e-10)


def test_u_stream_is_not_recomputed_within_a_row():
    """Edits in row r leave the down-shifted u maps of rows <= r valid."""
    model = _model("pixelcnnpp", (1, 8, 8), 4, 1, (), False, 2)
    evaluator = IncrementalPixelCNN(model)
    evaluator.reset(torch.zeros(1, 1, 8, 8, dtype=torch.float64))
    evaluator.params(5)
    before = dict(evaluator.rows_computed)
    for col in range(8):
        evaluator.set_pixel(5, col, torch.full((1, 1), 0.5, dtype=torch.float64))
        evaluator.params(5)
    after = evaluator.rows_computed
    assert after["up0.u"] == before["up0.u"] and after["down0.u"] == before["down0.u"]
    assert after["up0.ul"] - before["up0.ul"] == 8 and after["down0.ul"] - before["down0.ul"] == 8


def test_misuse_raises():
    model = _model("pixelcnnpp", (1, 4, 4), 4, 1, (), False, 0)
    with pytest.raises(TypeError, match="PixelCNNpp or NCPN"):
        IncrementalPixelCNN(torch.nn.Linear(2, 2))
    evaluator = IncrementalPixelCNN(model)
    with pytest.raises(RuntimeError, match="reset"):
        evaluator.params()
    with pytest.raises(ValueError, match="expects inputs of shape"):
        evaluator.reset(torch.zeros(1, 1, 5, 4, dtype=torch.float64))
    evaluator.reset(torch.zeros(1, 1, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="up_to_row"):
        evaluator.params(4)
    model.train()
    with pytest.raises(ValueError, match="eval mode"):
        evaluator.reset(torch.zeros(1, 1, 4, 4, dtype=torch.float64))
