"""Incremental (row-cached) evaluation of PixelCNN++ / NCPN for ancestral sampling.

Activation caching in the spirit of Fast PixelCNN++ (Ramachandran et al., "Fast Generation for
Convolutional Autoregressive Models", ICLR 2017 workshop), at row granularity: every
intermediate map of ``_PixelCNNppNet.forward`` is kept at full size, and after an input pixel in
row R changes only the rows that can depend on it are recomputed, and only when a later request
needs them. The net is evaluated op by op on bands of rows [lo, hi] with the
model's own weights (weight-normalised ones as the parametrisation computes them), its
conditioning ``Linear`` (NCPN) and its crops; the model must be in eval mode, where dropout is
the identity.

Why rows are enough (each map's row R depends on its inputs' rows <= R only):

* down-shifted / down-right-shifted convolutions pad kh - 1 rows on top: output row R reads input
  rows R - kh + 1 .. R; with stride 2 output row m reads input rows 2m - 1, 2m; 1x1 convolutions
  and elementwise ops are row-local;
* the stride-2 transposed convolutions have kernel height 2: output row R reads input row
  floor(R / 2) only (the module then crops to the matching up-pass size);
* the attention is strictly causal in raster order.

Stages: the net is split by resolution level l (map height H_l = ceil(H_{l-1} / 2)) into up0
(init convs, first up block, 'up' attention), up1, up2 (each starting with the stride-2
downsampling of the previous one), down2, down1, down0 (the last two starting with the upsampling
of the previous one; down0 ends with the 'down' attention and the head), and each of those into
its two streams: "u" (down-shifted) never reads "ul" (down-right-shifted), and at full resolution
row R of u depends on input rows < R only. Each stage keeps the number of its leading rows that
are valid. A change of input row R invalidates level-l rows from R_l, with R_0 = R for ul and
R + 1 for u and R_{l+1} = ceil(R_l / 2); rows <= hi of a stage need (same stream; ul also needs
u of its own stage <= hi)

    up1: up0 <= 2 hi    up2: up1 <= 2 hi    down2: up2 <= hi
    down1: down2 <= floor(hi / 2), up1 <= hi    down0: down1 <= floor(hi / 2), up0 <= hi.

Sampling pixel (r, c) after a change of pixel (r, c - 1) then recomputes row r of the ul stream
at full resolution (plus one row of the ul stream at half resolution for even r, and at quarter
resolution for r divisible by 4); the u stream is recomputed once per image row.

Exactness: the same ops run on slices of the same maps, so the result equals the full forward
pass up to the rounding of kernels whose arithmetic depends on the tensor shape (float64
convolutions may sum in another order: ~1e-16, tested to 1e-10). Where this is under our control
the bands are set up to round like the full pass: elementwise functions see runs whose length is
a multiple of the SIMD width (``_vectorized``), 1x1 convolutions of a few pixels run on the full
map's shape (``_SMALL_1X1``), and the attention's queries of a band attend to the full-length
key/value cache with the forward's strict mask (keys not yet computed are finite and get weight
exactly 0). With float32 on CPU the cached params then round like the full pass almost
everywhere: for the 28x28 models of ``benchmarks/ar_sampling.py`` (AVX2, one thread) the discrete
samples are bitwise equal and the continuous ones equal or within 5e-7.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from hybrids.models.base import check_time
from hybrids.models.layers import (
    CausalAttention,
    DownRightShiftedConv2d,
    DownRightShiftedDeconv2d,
    DownShiftedConv2d,
    DownShiftedDeconv2d,
    GatedResnet,
    Nin,
    down_shift,
    right_shift,
)
from hybrids.models.pixelcnnpp import NCPN, PixelCNNpp

STAGES = tuple(f"{block}.{stream}" for block in ("up0", "up1", "up2", "down2", "down1", "down0")
               for stream in ("u", "ul"))
"""Stages in an order that respects their dependencies: block (direction and resolution level,
0: full, 1: half, 2: quarter) and stream."""


def _stage_deps(stage: str) -> tuple[list[tuple[str, int, int]], int, bool]:
    """(dependencies as (stage, numerator, denominator) of the row bound, level, is_u_stream)."""
    block, stream = stage.split(".")
    direction, level = block[:-1], int(block[-1])
    deps = []
    if direction == "up":
        if level > 0:
            deps.append((f"up{level - 1}.{stream}", 2, 1))  # stride-2 downsampling
    else:
        if level < 2:
            deps.append((f"down{level + 1}.{stream}", 1, 2))  # transposed convolution
        deps.append((f"up{level}.{stream}", 1, 1))  # skip inputs
    if stream == "ul":
        deps.append((f"{block}.u", 1, 1))
    return deps, level, stream == "u"


_RUN = 32
"""Elementwise functions of bands run on buffers whose length is a multiple of this (twice the
SIMD lanes of float32 on AVX-512)."""

_SMALL_1X1 = 16
"""1x1 convolutions (and the attention's weighted sum of values) of bands with fewer pixels than
this run on the full map's shape: on CPU the GEMM kernels switch for tiny inputs (below 12
pixels per image for oneDNN on AVX2), and the other kernel rounds differently from the one the
full forward pass uses."""


def _vectorized(fn, t: Tensor) -> Tensor:
    """``fn(t)`` for an elementwise ``fn``, with every element on the vectorized CPU path.

    PyTorch's CPU kernels run the last ``n mod 2 V`` elements of each contiguous run (V: SIMD
    lanes, 2 V <= 32) through a scalar version of the function, which may round exp-based
    functions differently. A band's runs end elsewhere than the full map's, so a run whose length
    is not a multiple of ``_RUN`` is copied to a zero-padded flat buffer whose length is.
    """
    run = t if t.is_contiguous() else t[0]
    if run.is_contiguous() and run.numel() % _RUN == 0:
        return fn(t)
    n = t.numel()
    flat = F.pad(t.reshape(-1), (0, -n % _RUN))
    return fn(flat)[:n].view(t.shape)


def _concat_elu(x: Tensor) -> Tensor:
    """``concat_elu(x)`` with every element on the vectorized path (see ``_vectorized``)."""
    return _vectorized(F.elu, torch.cat([x, -x], dim=1))


class _Conv:
    """A shifted convolution (``DownShiftedConv2d`` / ``DownRightShiftedConv2d``, any stride) or
    a ``Nin``, with its weights fetched once, evaluated on row bands."""

    __slots__ = ("weight", "bias", "stride", "kh", "left", "right", "top")

    def __init__(self, module: nn.Module):
        conv = module.conv
        self.weight, self.bias = conv.weight, conv.bias  # weight norm: computed here, once
        self.stride, self.kh = conv.stride[0], conv.kernel_size[0]
        self.left, self.right, self.top, _ = getattr(module, "pad", (0, 0, 0, 0))

    def rows(self, src: Tensor, lo: int, hi: int, act=None, height: int | None = None,
             src_lo: int = 0) -> Tensor:
        """Rows [lo, hi] of ``module(act(src))``.

        ``src`` is the full-size input map, of which only the rows read (``s lo - kh + 1 ..
        s hi``) must be current, or a band of it whose first row is row ``src_lo``. ``act``
        (elementwise) comes before the padding, as in the modules' callers. ``height``: that of
        the full output map, for 1x1 convolutions of few pixels (see ``_SMALL_1X1``).
        """
        first = self.stride * lo - self.top
        rows = src[:, :, max(first, 0) - src_lo : self.stride * hi - self.top + self.kh - src_lo]
        if act is not None:
            rows = act(rows)
        pad = (self.left, self.right, max(first, 0) - first, 0)
        if any(pad):
            rows = F.pad(rows, pad)
        if (self.kh == 1 and height is not None and rows.shape[2] < height
                and rows.shape[2] * rows.shape[3] < _SMALL_1X1):
            # Tiny 1x1 inputs make oneDNN pick another kernel than for the full map (results
            # differ in the last bit); run it on the full map's shape, the band at its own rows.
            full = F.pad(rows, (0, 0, lo, height - 1 - hi))
            return F.conv2d(full, self.weight, self.bias)[:, :, lo : hi + 1]
        return F.conv2d(rows, self.weight, self.bias, self.stride)

    def down_shifted_rows(self, src: Tensor, lo: int, hi: int) -> Tensor:
        """Rows [lo, hi] of ``down_shift(module(src))``."""
        if lo == 0:
            return down_shift(self.rows(src, 0, hi))
        return self.rows(src, lo - 1, hi - 1)


class _Deconv:
    """A stride-2 shifted transposed convolution of kernel height 2 (``DownShiftedDeconv2d`` /
    ``DownRightShiftedDeconv2d``) evaluated on row bands: output rows 2i, 2i + 1 read input row
    i only."""

    __slots__ = ("module", "weight", "bias", "args")

    def __init__(self, module: nn.Module):
        deconv = module.deconv
        if deconv.kernel_size[0] != 2 or tuple(deconv.stride) != (2, 2):
            raise ValueError("the row-band upsampling assumes stride-2 kernels of height 2.")
        self.module = module
        self.weight, self.bias = deconv.weight, deconv.bias
        self.args = (deconv.stride, deconv.padding, deconv.output_padding, deconv.groups,
                     deconv.dilation)

    def rows(self, src: Tensor, lo: int, hi: int, size: tuple[int, int]) -> Tensor:
        """Rows [lo, hi] of ``module(src, size)``. The transposed convolution of input rows
        [i0, i1] gives output rows 2 i0 .. 2 i1 + 1 plus one row that is wrong in a slice (the
        output-padding row, which would read row i1 + 1); the module's crop drops it."""
        i0, i1 = lo // 2, hi // 2
        y = F.conv_transpose2d(src[:, :, i0 : i1 + 1], self.weight, self.bias, *self.args)
        return self.module._crop(y)[:, :, lo - 2 * i0 : hi - 2 * i0 + 1, : size[1]]


class IncrementalPixelCNN:
    """Row-cached evaluator of a ``PixelCNNpp`` or ``NCPN`` (see the module docstring).

    It implements :class:`hybrids.models.base.IncrementalCache`; the models hand one out through
    ``model.incremental_cache()`` (in eval mode), which is how ``ancestral_sample`` gets it.

    Usage: ``reset(x, t)``; change pixels with ``set_pixel`` (or edit ``x`` in place and call
    ``invalidate_from_row``); ``params(r)`` returns mixture params whose rows <= r equal those of
    ``model(x, t)``, recomputing only what is stale and needed.

    Args:
        model: a ``PixelCNNpp`` or ``NCPN`` in eval mode. Its weights are read at ``reset``: call
            ``reset`` again after changing them.

    Attributes:
        rows_computed: rows computed so far per stage (``STAGES``), for tests and profiling.
    """

    def __init__(self, model: PixelCNNpp | NCPN):
        if not isinstance(model, (PixelCNNpp, NCPN)):
            raise TypeError(
                f"IncrementalPixelCNN needs a PixelCNNpp or NCPN; got {type(model).__name__}.")
        self.model = model
        self.net = net = model.net
        c, height, width = model.image_shape
        self.num_channels = c
        self.sizes = [(height, width)]
        for _ in range(2):
            h_prev, w_prev = self.sizes[-1]
            self.sizes.append(((h_prev + 1) // 2, (w_prev + 1) // 2))
        # Names of the up-pass maps in the order of the forward's u_list / ul_list, and the skip
        # inputs each down-pass resnet pops from them.
        u_names, ul_names = [], []
        for level in range(3):
            first = "init" if level == 0 else "ds"
            u_names.append(f"up{level}.u.{first}")
            ul_names.append(f"up{level}.ul.{first}")
            for i in range(len(net.up_u[level])):
                u_names.append(f"up{level}.u.{i}")
                ul_names.append(f"up{level}.ul.{i}")
        self._top = (u_names.pop(), ul_names.pop())
        self._skips = []
        for block in range(3):
            self._skips.append([(u_names.pop(), ul_names.pop()) for _ in net.down_u[block]])
        self._deps = {stage: _stage_deps(stage) for stage in STAGES}
        self._compute = {}
        for level in range(3):
            self._compute[f"up{level}.u"] = lambda lo, hi, l=level: self._up_u(l, lo, hi)
            self._compute[f"up{level}.ul"] = lambda lo, hi, l=level: self._up_ul(l, lo, hi)
            self._compute[f"down{level}.u"] = lambda lo, hi, l=level: self._down_u(l, lo, hi)
            self._compute[f"down{level}.ul"] = lambda lo, hi, l=level: self._down_ul(l, lo, hi)
        self.rows_computed = dict.fromkeys(STAGES, 0)
        self._x_pad: Tensor | None = None

    # ------------------------------------------------------------------ public interface

    @torch.no_grad()
    def reset(self, x: Tensor, t: Tensor | float | None = None) -> None:
        """Start from input ``x [B, C, H, W]`` (copied) at times ``t`` (ignored by PixelCNNpp;
        None means 0 for NCPN) and read the model's weights. Nothing else is computed until
        ``params`` asks for it."""
        if self.model.training:
            raise ValueError(
                "IncrementalPixelCNN needs the model in eval mode (call model.eval()).")
        self.model._check_x(x)
        self._x_pad = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        with parametrize.cached():
            self._ops = {}
            for module in self.net.modules():
                if isinstance(module, (DownShiftedConv2d, DownRightShiftedConv2d, Nin)):
                    self._ops[module] = _Conv(module)
                elif isinstance(module, (DownShiftedDeconv2d, DownRightShiftedDeconv2d)):
                    self._ops[module] = _Deconv(module)
        self._cond = {}
        if isinstance(self.model, NCPN):
            h = self.model.embedding(check_time(x, 0.0 if t is None else t))
            for module in self.net.modules():
                if isinstance(module, GatedResnet) and module.cond is not None:
                    self._cond[module] = module.cond(h)[:, :, None, None]
        b, _, height, width = x.shape
        self._pos = CausalAttention.positions(x.new_empty(b, 1, height, width))
        self._cache: dict[str, Tensor] = {}
        self._valid = dict.fromkeys(STAGES, 0)

    @property
    def x(self) -> Tensor:
        """The current input ``[B, C, H, W]`` (a view; after editing rows >= R in place, call
        ``invalidate_from_row(R)``)."""
        self._check_reset()
        return self._x_pad[:, : self.num_channels]

    @torch.no_grad()
    def set_pixel(self, row: int, col: int, value: Tensor) -> None:
        """Set input pixel (row, col) to ``value [B, C]`` and invalidate what depends on it."""
        self._check_reset()
        self._x_pad[:, : self.num_channels, row, col] = value
        self.invalidate_from_row(row)

    def invalidate_from_row(self, row: int) -> None:
        """Mark everything that depends on input rows >= ``row`` as stale."""
        self._check_reset()
        first = {False: [int(row)], True: [int(row) + 1]}  # ul: rows >= R; u: rows > R
        for rows in first.values():
            for _ in range(2):
                rows.append((rows[-1] + 1) // 2)
        for stage, (_, level, is_u) in self._deps.items():
            self._valid[stage] = min(self._valid[stage], first[is_u][level])

    @torch.no_grad()
    def params(self, up_to_row: int | None = None) -> Tensor:
        """Mixture params ``[B, P, H, W]`` whose rows <= ``up_to_row`` (None: all) equal those
        of ``model(x, t)``; later rows hold stale values or zeros. The tensor is the evaluator's
        cache: read it before the next call."""
        self._check_reset()
        height = self.sizes[0][0]
        up_to_row = height - 1 if up_to_row is None else int(up_to_row)
        if not 0 <= up_to_row < height:
            raise ValueError(f"up_to_row must lie in [0, {height - 1}]; got {up_to_row}.")
        self._ensure("down0.ul", up_to_row)
        return self._cache["params"]

    # ------------------------------------------------------------------ bookkeeping

    def _check_reset(self) -> None:
        if self._x_pad is None:
            raise RuntimeError("call reset(x, t) first.")

    def _ensure(self, stage: str, hi: int) -> None:
        """Make rows <= hi of ``stage`` current (first those of the stages they read)."""
        deps, level, _ = self._deps[stage]
        hi = min(hi, self.sizes[level][0] - 1)
        lo = self._valid[stage]
        if lo > hi:
            return
        for dep, num, den in deps:
            self._ensure(dep, hi * num // den)
        self._compute[stage](lo, hi)
        self.rows_computed[stage] += hi - lo + 1
        self._valid[stage] = hi + 1

    def _put(self, name: str, level: int, lo: int, rows: Tensor) -> Tensor:
        """Write ``rows`` (rows lo.. of map ``name`` at ``level``) into its full-size cache."""
        cache = self._cache.get(name)
        if cache is None:
            b, f, _, w = rows.shape
            cache = rows.new_zeros(b, f, self.sizes[level][0], w)
            self._cache[name] = cache
        cache[:, :, lo : lo + rows.shape[2]] = rows
        return rows

    # ------------------------------------------------------------------ blocks on row bands

    def _resnet(self, res: GatedResnet, src: Tensor, lo: int, hi: int, level: int,
                a: Tensor | None = None, c1_name: str | None = None, src_lo: int = 0) -> Tensor:
        """Rows [lo, hi] of ``res(src, a, h)`` at resolution ``level``: ``src`` is the full-size
        input map, or (1x1 resnets) a band starting at row ``src_lo``; ``a`` holds the skip
        input's rows [lo, hi]. With ``c1_name`` the first convolution's output is cached, for the
        second (shifted) convolution reads the row above the band. Dropout (eval) is the
        identity."""
        ops, height = self._ops, self.sizes[level][0]
        c1 = ops[res.conv1].rows(src, lo, hi, _concat_elu, height, src_lo)
        if res.skip is not None:
            c1 = c1 + ops[res.skip].rows(a, lo, hi, _concat_elu, height, lo)
        if c1_name is None:
            c1_src, c1_lo = c1, lo
        else:
            self._put(c1_name, level, lo, c1)
            c1_src, c1_lo = self._cache[c1_name], 0
        c2 = ops[res.conv2].rows(c1_src, lo, hi, _concat_elu, height, c1_lo)
        if res.cond is not None:
            c2 = c2 + self._cond[res]
        gate_in, gate = c2.chunk(2, dim=1)
        return src[:, :, lo - src_lo : hi + 1 - src_lo] + gate_in * _vectorized(torch.sigmoid, gate)

    def _attention(self, attn: CausalAttention, features: Tensor, lo: int, hi: int,
                   name: str) -> Tensor:
        """Rows [lo, hi] of ``attn(features, x, h)`` (full resolution) given the features' rows
        [lo, hi]; keys and values of earlier rows come from the cache ``name``."""
        b, c, n_rows, width = features.shape
        height = self.sizes[0][0]
        pos = self._pos[:, :, lo : hi + 1]
        x = self._x_pad[:, : self.num_channels, lo : hi + 1]
        kv_in = torch.cat([x, features, pos], dim=1)
        kv_res = self._resnet(attn.kv_res, kv_in, lo, hi, 0, src_lo=lo)
        self._put(name, 0, lo, self._ops[attn.to_kv].rows(kv_res, lo, hi, None, height, lo))
        q_res = self._resnet(attn.q_res, torch.cat([features, pos], dim=1), lo, hi, 0, src_lo=lo)
        q = self._ops[attn.to_q].rows(q_res, lo, hi, None, height, lo).flatten(2)
        kv = self._cache[name].flatten(2)
        keys, values = kv[:, : attn.attn_dim], kv[:, attn.attn_dim :]
        logits = torch.einsum("bdi,bdj->bij", q, keys) / math.sqrt(attn.attn_dim)
        query = torch.arange(lo * width, (hi + 1) * width, device=kv.device)
        mask = torch.arange(kv.shape[2], device=kv.device)[None, :] < query[:, None]  # key < query
        logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
        weights = torch.softmax(logits, dim=-1) * mask  # the first pixel (no past) gets zeros
        n, n_query = kv.shape[2], weights.shape[1]
        if n_query < min(n, _SMALL_1X1):  # as for 1x1 convolutions: the full map's shape
            weights = F.pad(weights, (0, 0, lo * width, n - (hi + 1) * width))
            out = torch.einsum("bij,bcj->bci", weights, values)[:, :, lo * width : (hi + 1) * width]
        else:
            out = torch.einsum("bij,bcj->bci", weights, values)
        out = out.reshape(b, c, n_rows, width)
        return self._resnet(attn.out_res, features, lo, hi, 0, a=out, src_lo=lo)

    # ------------------------------------------------------------------ stages

    def _last(self, direction: str, level: int) -> tuple[str, str]:
        """Cache names of the last (u, ul) maps of block ``direction + level``."""
        n = len((self.net.up_u if direction == "up" else self.net.down_u)[
            level if direction == "up" else 2 - level])
        if n:
            return f"{direction}{level}.u.{n - 1}", f"{direction}{level}.ul.{n - 1}"
        if direction == "down" and level == 2:
            return self._top
        first = "up" if direction == "down" else ("init" if level == 0 else "ds")
        return f"{direction}{level}.u.{first}", f"{direction}{level}.ul.{first}"

    def _up_u(self, level: int, lo: int, hi: int) -> None:
        net, cache = self.net, self._cache
        if level == 0:
            src = "up0.u.init"
            self._put(src, 0, lo, self._ops[net.u_init].down_shifted_rows(self._x_pad, lo, hi))
        else:
            src = f"up{level}.u.ds"
            prev = cache[self._last("up", level - 1)[0]]
            self._put(src, level, lo, self._ops[net.downsample_u[level - 1]].rows(prev, lo, hi))
        for i, res in enumerate(net.up_u[level]):
            name = f"up{level}.u.{i}"
            self._put(name, level, lo,
                      self._resnet(res, cache[src], lo, hi, level, c1_name=name + ".c1"))
            src = name

    def _up_ul(self, level: int, lo: int, hi: int) -> None:
        net, cache, ops = self.net, self._cache, self._ops
        if level == 0:
            src = "up0.ul.init"
            xp = self._x_pad
            ul = ops[net.ul_init_up].down_shifted_rows(xp, lo, hi) + right_shift(
                ops[net.ul_init_left].rows(xp, lo, hi))
            self._put(src, 0, lo, ul)
        else:
            src = f"up{level}.ul.ds"
            prev = cache[self._last("up", level - 1)[1]]
            self._put(src, level, lo, ops[net.downsample_ul[level - 1]].rows(prev, lo, hi))
        last = len(net.up_ul[level]) - 1
        for i, res in enumerate(net.up_ul[level]):
            name = f"up{level}.ul.{i}"
            u = cache[f"up{level}.u.{i}"][:, :, lo : hi + 1]
            ul = self._resnet(res, cache[src], lo, hi, level, a=u, c1_name=name + ".c1")
            if level == 0 and i == last and "up" in net.attn:
                ul = self._attention(net.attn["up"], ul, lo, hi, "attn.up.kv")
            self._put(name, level, lo, ul)
            src = name

    def _down_u(self, level: int, lo: int, hi: int) -> None:
        net, cache = self.net, self._cache
        block = 2 - level
        if block == 0:
            src = self._top[0]
        else:
            src = f"down{level}.u.up"
            prev = cache[self._last("down", level + 1)[0]]
            self._put(src, level, lo,
                      self._ops[net.upsample_u[block - 1]].rows(prev, lo, hi, self.sizes[level]))
        for j, res in enumerate(net.down_u[block]):
            name = f"down{level}.u.{j}"
            a = cache[self._skips[block][j][0]][:, :, lo : hi + 1]
            self._put(name, level, lo,
                      self._resnet(res, cache[src], lo, hi, level, a=a, c1_name=name + ".c1"))
            src = name

    def _down_ul(self, level: int, lo: int, hi: int) -> None:
        net, cache = self.net, self._cache
        block = 2 - level
        if block == 0:
            src = self._top[1]
        else:
            src = f"down{level}.ul.up"
            prev = cache[self._last("down", level + 1)[1]]
            self._put(src, level, lo,
                      self._ops[net.upsample_ul[block - 1]].rows(prev, lo, hi, self.sizes[level]))
        for j, res in enumerate(net.down_ul[block]):
            name = f"down{level}.ul.{j}"
            a = torch.cat([cache[f"down{level}.u.{j}"][:, :, lo : hi + 1],
                           cache[self._skips[block][j][1]][:, :, lo : hi + 1]], dim=1)
            ul = self._put(name, level, lo,
                           self._resnet(res, cache[src], lo, hi, level, a=a, c1_name=name + ".c1"))
            src = name
        if level == 0:
            if "down" in net.attn:
                ul = self._attention(net.attn["down"], ul, lo, hi, "attn.down.kv")
            elu = lambda v: _vectorized(F.elu, v)  # noqa: E731
            params = self._ops[net.head].rows(ul, lo, hi, elu, self.sizes[0][0], lo)
            self._put("params", 0, lo, params)
