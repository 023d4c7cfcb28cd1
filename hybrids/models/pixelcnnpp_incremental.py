"""Per-pixel cached evaluation of PixelCNN++ / NCPN for ancestral sampling.

Activation caching in the style of Fast PixelCNN++ (Ramachandran et al., "Fast Generation for
Convolutional Autoregressive Models", ICLR 2017 workshop): the network is evaluated pixel by
pixel in raster order, and every layer keeps the activations its later outputs read, so a new
pixel costs about one position's work per layer. The model must be in eval mode (dropout is then
the identity); its weights (weight-normalised ones as the parametrisation computes them), its
conditioning ``Linear`` layers (NCPN) and its crops are read at ``reset``.

Why one position per layer is enough. The down-right ("ul") stream at resolution level l (map
size H_l = ceil(H_{l-1} / 2), level 0 the image) keeps position (m, n) of every layer valid once
computed: at level 0 it depends only on pixels strictly before (m, n) in raster order, and at level
l only on pixels strictly before (2^l m, 2^l n). So position (m, n) of level l is computed once, at
pixel (2^l m, 2^l n), the first pixel that needs it (full-resolution pixel (r, c) of the down pass
reads the upsampled level-1 map at (r // 2, c // 2) only):

* the 2x2 down-right convolutions read the window (m - 1 .. m, n - 1 .. n) of their input,
  earlier positions of the same level; the stride-2 downsampling reads the window
  (2m - 1 .. 2m, 2n - 1 .. 2n) of the finer level, computed by the same pixel or earlier; the
  stride-2 transposed convolution reads position (m // 2, n // 2) of the coarser level;
* NCPN's causal attention (full resolution): the query of pixel p attends to the keys/values of
  pixels < p, kept in a cache; the key/value of pixel p - 1 reads that pixel's value, so it is
  computed at pixel p, once the sampler has set it.

The down-shifted ("u") stream at level l, row m depends on image rows < 2^l m only: it is computed
a row at a time (every op of the row at once, with the model's own convolutions) when image row
2^l m starts, together with what the ul stream reads from it (the skip 1x1 convolutions on u,
folded into the bias of the ul convolution at each position).

Per position, every convolution is one GEMM (``torch.addmm``) on its window gathered from a
channel-last buffer, with weights precomputed as 2-D matrices. Maps are stored as [y, -y] (what
``concat_elu`` feeds the next convolution: the weights are doubled to [W, -W] so that the GEMM
writes both halves; convolutions of the plain map y get zero rows for -y), in buffers padded with
a zero row on top and a zero column on the left, so a window is a strided view and needs no
``F.pad``. For PixelCNN++ with one resnet per block, a pixel costs about 11 small GEMMs and
twice as many elementwise ops (profiled at 28x28; timings in docs/benchmarks.md).

Besides pixels in raster order (``pixel_params``), the evaluator answers for whole rows
(``params``, the :class:`hybrids.models.base.IncrementalCache` protocol) and after edits
anywhere: ``set_pixel`` moves the first pixel to evaluate (the frontier) back to the pixel after
the edited one; everything computed for the pixels before it stays valid.

Exactness: the same arithmetic in another order. Float64 params equal the full forward pass to
~1e-15 (tested to 1e-10); in float32 they differ from the full pass's oneDNN convolutions by
float32 rounding (~1e-6), so a sampled level can differ from the naive sampler's when the draw
lies that close to a bin edge (see ``hybrids.samplers.autoregressive``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils import parametrize

from hybrids.models.base import check_time
from hybrids.models.layers import CausalAttention, GatedResnet, concat_elu
from hybrids.models.pixelcnnpp import NCPN, PixelCNNpp

STAGES = tuple(f"{block}.{stream}" for block in ("up0", "up1", "up2", "down2", "down1", "down0")
               for stream in ("u", "ul"))
"""Stages: block (direction and resolution level, 0: full, 1: half, 2: quarter) and stream."""

_UL_STAGES = {(d, level): f"{d}{level}.ul" for d in ("up", "down") for level in range(3)}


def _mat(weight: Tensor) -> Tensor:
    """Convolution weight ``[O, I, kh, kw]`` -> GEMM weight ``[kh * kw * I, O]`` for windows laid
    out as (row, column, channel)."""
    return weight.permute(2, 3, 1, 0).reshape(-1, weight.shape[0])


def _pm(w: Tensor, b: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """GEMM weight ``[K, O]`` and bias ``[..., O]`` whose output is [y, -y] ``[..., 2 O]``."""
    return (torch.cat([w, -w], 1).contiguous(),
            None if b is None else torch.cat([b, -b], -1).contiguous())


def _pm_rows(y: Tensor) -> Tensor:
    """A row ``[B, F, 1, W]`` -> [y, -y] channel-last ``[B, W, 2F]``."""
    y = y[:, :, 0].transpose(1, 2)
    return torch.cat([y, -y], 2)


class _Buf:
    """A channel-last map ``[B, H_l + 1, W_l + 1, K]`` padded with a zero row on top and a zero
    column on the left, with views for one position and for a 2 x 2 window.

    Position (m, n) is ``flat[:, q + step]`` with ``q = m (W_l + 1) + n``, and ``win[:, q]`` is
    ``[B, 2, 2 K]``: rows m - 1 .. m, columns n - 1 .. n (what a down-right 2 x 2 convolution at
    (m, n) reads, or a stride-2 one at (m / 2, n / 2) when m, n are even).
    """

    __slots__ = ("data", "flat", "win", "width", "step")

    def __init__(self, data: Tensor):
        b, rows, width, k = data.shape
        self.data, self.width, self.step = data, width, width + 1
        self.flat = data.view(b, rows * width, k)
        self.win = data.as_strided((b, (rows - 1) * width - 1, 2, 2 * k),
                                   (rows * width * k, k, width * k, 1))

    def at(self, m: int, n: int) -> Tensor:
        """Position (m, n), ``[B, K]`` (a view)."""
        return self.flat.select(1, m * self.width + n + self.step)


@dataclass
class _Res:
    """A gated resnet as GEMM weights: c1 = elu(window [, skip]) @ w1 + b1 -> [c1, -c1];
    c2 = elu(c1 window) @ w2 + b2 -> [a, -a, g, g] for the halves (a, g) of the resnet's c2;
    out = [x, -x] + [a, -a] * sigmoid([g, g]).

    Attributes:
        w1: ``[K1, 2F]``; b1: ``[2F]``, or None when the bias comes per position (it folds in
            the skip convolution on the u stream, computed a row at a time).
        w2: ``[K2, 4F]``; b2: ``[4F]`` or ``[B, 4F]`` (with NCPN's conditioning).
        channels: F.
    """

    w1: Tensor
    b1: Tensor | None
    w2: Tensor
    b2: Tensor
    channels: int


@dataclass
class _Attention:
    """A causal attention block as GEMM weights, its key/value cache and its buffers."""

    kv_res: _Res
    q_res: _Res
    out_res: _Res
    w_kv: Tensor
    b_kv: Tensor
    w_q: Tensor  # scaled by 1 / sqrt(attn_dim)
    b_q: Tensor
    attn_dim: int
    kv: Tensor  # [B, H W, attn_dim + F]: keys and values of the pixels before the frontier
    inp: str  # buffer of the features (the block's input)
    out: str  # buffer of the block's output


@dataclass
class _Step:
    """A down-right gated resnet of the ul stream at one level, wired to its buffers."""

    res: _Res
    src: _Buf
    c1: _Buf
    dst: _Buf
    bias: Tensor  # [B, H_l W_l, 2F]: the first convolution's bias at each position
    skip: _Buf | None  # the skip input read per position (down pass)


class IncrementalPixelCNN:
    """Per-pixel cached evaluator of a ``PixelCNNpp`` or ``NCPN`` (see the module docstring).

    It implements :class:`hybrids.models.base.PixelIncrementalCache`; the models hand one out
    through ``model.incremental_cache()`` (in eval mode), which is how ``ancestral_sample`` gets
    it.

    Usage: ``reset(x, t)``; ``pixel_params(r, c)`` returns the mixture params ``[B, P]`` of pixel
    (r, c) of ``model(x, t)``, evaluating the pixels from the first one not yet evaluated up to
    (r, c) in raster order; ``set_pixel(r, c, value)`` changes the input, and the pixels after
    (r, c) are evaluated again when asked for. ``params(r)`` does the same for whole rows. An
    ancestral sampler asks for each pixel in turn and sets it before asking for the next, so
    each position of each layer is computed once.

    Args:
        model: a ``PixelCNNpp`` or ``NCPN`` in eval mode. Its weights are read at ``reset``: call
            ``reset`` again after changing them.

    Attributes:
        positions_computed: per stage (``STAGES``), positions computed so far (u stages: whole
            rows of positions), for tests and profiling.
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
        # Map names (shared by the u and ul streams): the up-pass maps in the order of the
        # forward's u_list / ul_list, the last map of each block, and the skip inputs each
        # down-pass resnet pops from the lists.
        names, self._last_up = [], []
        for level in range(3):
            names.append(f"up{level}.init" if level == 0 else f"up{level}.ds")
            names.extend(f"up{level}.{i}" for i in range(len(net.up_u[level])))
            self._last_up.append(names[-1])
        self._top = names.pop()
        self._skips = [[names.pop() for _ in net.down_u[block]] for block in range(3)]
        self._last_down = [""] * 3
        for level in (2, 1, 0):
            n_res = len(net.down_u[2 - level])
            first = self._top if level == 2 else f"down{level}.up"
            self._last_down[level] = f"down{level}.{n_res - 1}" if n_res else first
        self.positions_computed = dict.fromkeys(STAGES, 0)
        self._xp: Tensor | None = None

    # ------------------------------------------------------------------ public interface

    @torch.no_grad()
    def reset(self, x: Tensor, t: Tensor | float | None = None) -> None:
        """Start from input ``x [B, C, H, W]`` (copied) at times ``t`` (ignored by PixelCNNpp;
        None means 0 for NCPN) and read the model's weights. Nothing is evaluated until
        ``pixel_params`` or ``params`` asks for it."""
        if self.model.training:
            raise ValueError(
                "IncrementalPixelCNN needs the model in eval mode (call model.eval()).")
        self.model._check_x(x)
        net = self.net
        self._nf = nf = net.u_init.conv.out_channels
        b, c, height, width = x.shape
        # The forward's x_pad (x and a channel of ones) channel last, padded with a zero row on
        # top and zero columns left and right; _xwin[:, q] = [B, 2, C + 1]: rows m - 1 .. m of
        # column n - 1 for q = m (W + 2) + n (what ul_init_left reads for pixel (m, n)).
        self._xp = x.new_zeros(b, height + 1, width + 2, c + 1)
        self._xp[:, 1:, 1:-1, :c] = x.permute(0, 2, 3, 1)
        self._xp[:, 1:, 1:-1, c] = 1.0
        k, row = c + 1, (width + 2) * (c + 1)
        self._xwin = self._xp.as_strided((b, height * (width + 2), 2, k),
                                         ((height + 1) * row, k, row, 1))
        cond = {}
        if isinstance(self.model, NCPN):
            h = self.model.embedding(check_time(x, 0.0 if t is None else t))
            cond = {m: m.cond(h) for m in net.modules()
                    if isinstance(m, GatedResnet) and m.cond is not None}
        self._cond = {m: v[:, :, None, None] for m, v in cond.items()}
        with parametrize.cached():
            self._read_weights(cond)
        # u maps [B, F, H_l, W_l]; ul maps as padded [y, -y] buffers; the biases of the ul
        # convolutions that fold in the u stream [B, H_l, W_l, 2F]; params [B, H, W, P].
        self._u, self._ul, self._row_bias = {}, {}, {}
        for level, (h_l, w_l) in enumerate(self.sizes):
            for name in self._level_maps(level):
                self._u[name] = x.new_zeros(b, nf, h_l, w_l)
                self._ul[name] = _Buf(x.new_zeros(b, h_l + 1, w_l + 1, 2 * nf))
                if not name.endswith((".c1", ".up", ".ds")):
                    self._row_bias[name] = x.new_zeros(b, h_l, w_l, 2 * nf)
        self._row_bias["init.left"] = x.new_zeros(b, height, width, 2 * nf)
        self._init_bias = self._row_bias["up0.init"].view(b, height * width, 2 * nf)
        self._init_left_bias = self._row_bias["init.left"].view(b, height * width, 2 * nf)
        for attn in self._attn.values():
            for name in (attn.inp, attn.out):
                if name not in self._ul:
                    self._ul[name] = _Buf(x.new_zeros(b, height + 1, width + 1, 2 * nf))
        self._params = x.new_zeros(b, height * width, self.model.num_params)
        self._plans = {(d, level): self._plan(d, level) for d in ("up", "down") for level in range(3)}
        self._final = self._ul[self._attn["down"].out if "down" in self._attn else self._last_down[0]]
        pos = CausalAttention.positions(x.new_empty(b, 1, height, width))
        self._pos = pos.permute(2, 3, 0, 1).contiguous()  # [H, W, B, 2]
        self._frontier = 0  # the pixels before it (raster index) are evaluated for the current x

    @torch.no_grad()
    def pixel_params(self, row: int, col: int) -> Tensor:
        """Mixture params ``[B, P]`` of pixel (row, col) of ``model(x, t)`` (a view of the
        evaluator's buffer: read it before changing a pixel before it)."""
        self._check_reset()
        height, width = self.sizes[0]
        if not (0 <= row < height and 0 <= col < width):
            raise ValueError(f"pixel ({row}, {col}) lies outside the {height}x{width} image.")
        self._advance(row * width + col + 1)
        return self._params.select(1, row * width + col)

    @torch.no_grad()
    def params(self, up_to_row: int | None = None) -> Tensor:
        """Mixture params ``[B, P, H, W]`` whose rows <= ``up_to_row`` (None: all) equal those
        of ``model(x, t)``; later rows hold stale values or zeros. The tensor is a view of the
        evaluator's buffer: read it before the next call."""
        self._check_reset()
        height, width = self.sizes[0]
        up_to_row = height - 1 if up_to_row is None else int(up_to_row)
        if not 0 <= up_to_row < height:
            raise ValueError(f"up_to_row must lie in [0, {height - 1}]; got {up_to_row}.")
        self._advance((up_to_row + 1) * width)
        return self._params.view(self._params.shape[0], height, width, -1).permute(0, 3, 1, 2)

    @torch.no_grad()
    def set_pixel(self, row: int, col: int, value: Tensor) -> None:
        """Set input pixel (row, col) to ``value [B, C]``; the pixels after it are evaluated
        again when asked for."""
        self._check_reset()
        self._xp[:, row + 1, col + 1, : self.num_channels] = value
        self._frontier = min(self._frontier, row * self.sizes[0][1] + col + 1)

    @property
    def rows_computed(self) -> dict[str, int]:
        """Rows' worth of positions computed so far per stage."""
        return {stage: count // self.sizes[int(stage.split(".")[0][-1])][1]
                for stage, count in self.positions_computed.items()}

    # ------------------------------------------------------------------ set-up

    def _check_reset(self) -> None:
        if self._xp is None:
            raise RuntimeError("call reset(x, t) first.")

    def _level_maps(self, level: int) -> list[str]:
        """Names of the maps (and of the first convolutions' outputs, ``.c1``) at ``level``."""
        net = self.net
        names = [f"up{level}.init" if level == 0 else f"up{level}.ds"]
        for i in range(len(net.up_u[level])):
            names += [f"up{level}.{i}", f"up{level}.{i}.c1"]
        if level < 2:
            names.append(f"down{level}.up")
        for j in range(len(net.down_u[2 - level])):
            names += [f"down{level}.{j}", f"down{level}.{j}.c1"]
        return names

    @staticmethod
    def _res(res: GatedResnet, cond: dict, skip: Tensor | None = None,
             with_bias: bool = False) -> _Res:
        """GEMM weights of ``res``; ``skip``: rows of w1 for a skip input read per position;
        ``with_bias``: b1 constant (else it comes per position)."""
        nf = res.conv2.conv.out_channels // 2
        w1 = _mat(res.conv1.conv.weight)
        if skip is not None:
            w1 = torch.cat([w1, skip], 0)
        b1 = None
        if with_bias:
            b1 = res.conv1.conv.bias + (res.skip.conv.bias if res.skip is not None else 0.0)
        w1, b1 = _pm(w1, b1)
        w2, b2 = _mat(res.conv2.conv.weight), res.conv2.conv.bias
        if res in cond:
            b2 = b2 + cond[res]
        a, g = slice(0, nf), slice(nf, 2 * nf)
        w2 = torch.cat([w2[:, a], -w2[:, a], w2[:, g], w2[:, g]], 1).contiguous()
        b2 = torch.cat([b2[..., a], -b2[..., a], b2[..., g], b2[..., g]], -1).contiguous()
        return _Res(w1, b1, w2, b2, nf)

    def _read_weights(self, cond: dict) -> None:
        """The model's weights as GEMM weights (ul stream) or as they are (u rows), and the
        attention blocks' key/value caches; ``cond``: NCPN's conditioning per resnet."""
        net, b, nf = self.net, self._xp.shape[0], self._nf
        height, width = self.sizes[0]

        def positive(w: Tensor) -> Tensor:
            """GEMM rows ``[K, O]`` for the y half of a [y, -y] input: zero rows for -y."""
            return torch.cat([w, torch.zeros_like(w)], 0)

        self._w = {m: (m.weight, m.bias) for m in net.modules()  # for the u rows
                   if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))}
        self._left = _pm(_mat(net.ul_init_left.conv.weight), net.ul_init_left.conv.bias)
        # Stride-2 downsampling of the plain map y: the -y channels of the window get zero rows.
        self._ds = []
        for m in net.downsample_ul:
            w = m.conv.weight
            self._ds.append(_pm(_mat(torch.cat([w, torch.zeros_like(w)], 1)), m.conv.bias))
        # Transposed convolutions: output (i, j) = input (i // 2, j // 2) @ w[:, :, i % 2, j % 2].
        self._deconv = [([[_pm(positive(m.deconv.weight[:, :, i, j]))[0] for j in range(2)]
                          for i in range(2)], torch.cat([m.deconv.bias, -m.deconv.bias]))
                        for m in net.upsample_ul]
        self._head = (positive(_mat(net.head.conv.weight)).contiguous(), net.head.conv.bias)
        self._ul_res, self._skip_u = {}, {}
        for level in range(3):
            for i, res in enumerate(net.up_ul[level]):
                self._ul_res[f"up{level}.{i}"] = self._res(res, cond)
            for j, res in enumerate(net.down_ul[2 - level]):
                # skip = nin(concat_elu([u, ul])), input channels [u, ul, -u, -ul]: the ul half is
                # read per position, the u half per row (folded into the bias).
                w_skip = res.skip.conv.weight
                w_ul = _mat(torch.cat([w_skip[:, nf: 2 * nf], w_skip[:, 3 * nf:]], 1))
                self._ul_res[f"down{level}.{j}"] = self._res(res, cond, skip=w_ul)
                self._skip_u[f"down{level}.{j}"] = torch.cat(
                    [w_skip[:, :nf], w_skip[:, 2 * nf: 3 * nf]], 1)
        self._attn = {}
        for where, attn in net.attn.items():
            if where == "up" and not len(net.up_ul[0]):
                continue  # the forward places the 'up' block after the last first-block resnet
            scale = attn.attn_dim ** -0.5
            self._attn[where] = _Attention(
                kv_res=self._res(attn.kv_res, cond, with_bias=True),
                q_res=self._res(attn.q_res, cond, with_bias=True),
                out_res=self._res(attn.out_res, cond, skip=_mat(attn.out_res.skip.conv.weight),
                                  with_bias=True),
                w_kv=_mat(attn.to_kv.conv.weight).contiguous(), b_kv=attn.to_kv.conv.bias,
                w_q=(_mat(attn.to_q.conv.weight) * scale).contiguous(),
                b_q=attn.to_q.conv.bias * scale, attn_dim=attn.attn_dim,
                kv=self._xp.new_zeros(b, height * width, attn.to_kv.conv.out_channels),
                inp=f"attn.{where}.in",
                out=self._last_up[0] if where == "up" else "attn.down.out")

    # ------------------------------------------------------------------ evaluation

    def _advance(self, stop: int) -> None:
        """Evaluate the pixels from the frontier to raster index ``stop`` (excluded)."""
        width = self.sizes[0][1]
        for p in range(self._frontier, stop):
            row, col = divmod(p, width)
            self._pixel(row, col)
        self._frontier = max(self._frontier, stop)

    def _pixel(self, row: int, col: int) -> None:
        """Everything pixel (row, col) needs that earlier pixels did not compute."""
        if col == 0:
            self._rows(row)
        top = 0  # the coarsest level with a new position at this pixel
        while top < 2 and row % (2 << top) == 0 and col % (2 << top) == 0:
            top += 1
        for level in range(top + 1):
            self._up_ul(level, row >> level, col >> level)
        for level in range(top, -1, -1):
            self._down_ul(level, row >> level, col >> level)
        w_head, b_head = self._head
        torch.addmm(b_head, F.elu(self._final.at(row, col)), w_head,
                    out=self._params.select(1, row * self.sizes[0][1] + col))

    # u stream: a row of every map at once (NCHW, the model's convolutions)

    def _conv_row(self, conv: torch.nn.Conv2d, src: Tensor, m: int,
                  act: Callable[[Tensor], Tensor] | None = None, stride: int = 1) -> Tensor:
        """Row m ``[B, O, 1, W_out]`` of the down-shifted convolution whose ``Conv2d`` is
        ``conv`` (kernel kh x kw, ``stride``) of ``act(src)``, ``src`` a full map
        ``[B, I, H, W]``."""
        weight, bias = self._w[conv]
        kh, kw = weight.shape[2:]
        top = stride * m - (kh - 1)
        band = src[:, :, max(top, 0): stride * m + 1]
        if act is not None:
            band = act(band)
        band = F.pad(band, ((kw - 1) // 2, (kw - 1) // 2, max(-top, 0), 0))
        return F.conv2d(band, weight, bias, stride)

    def _u_res_row(self, res: GatedResnet, src: Tensor, c1: Tensor, m: int,
                   skip: Tensor | None = None) -> Tensor:
        """Row m ``[B, F, 1, W]`` of ``res(src, a, h)`` (u stream); ``skip``: row m of ``a``;
        ``c1``: the map of the first convolution's outputs (row m is written)."""
        row = self._conv_row(res.conv1.conv, src, m, concat_elu)
        if skip is not None:
            row = row + F.conv2d(concat_elu(skip), *self._w[res.skip.conv])
        c1[:, :, m] = row[:, :, 0]
        c2 = self._conv_row(res.conv2.conv, c1, m, concat_elu)
        if res in self._cond:
            c2 = c2 + self._cond[res]
        gate_in, gate = c2.chunk(2, dim=1)
        return src[:, :, m: m + 1] + gate_in * torch.sigmoid(gate)

    def _rows(self, row: int) -> None:
        """At the start of image row ``row``: the u rows it makes computable (row row / 2^l of
        level l when 2^l divides it) and the per-row biases of the ul convolutions."""
        net, u, xp = self.net, self._u, self._xp
        levels = [level for level in range(3) if row % (1 << level) == 0]
        if row > 0:  # row 0 of the down-shifted maps is zero
            xb = xp[:, row - 1: row + 1].permute(0, 3, 1, 2)  # image rows row - 2, row - 1
            u["up0.init"][:, :, row] = F.conv2d(xb, *self._w[net.u_init.conv])[:, :, 0]
            up = F.conv2d(xb[:, :, 1:], *self._w[net.ul_init_up.conv])
        else:
            up = xp.new_zeros(xp.shape[0], self._nf, 1, self.sizes[0][1])
        self._row_bias["up0.init"][:, row] = _pm_rows(up)  # right_shift: no left term in column 0
        self._row_bias["init.left"][:, row] = self._row_bias["up0.init"][:, row] + self._left[1]
        for level in levels:
            m = row >> level
            src = "up0.init" if level == 0 else f"up{level}.ds"
            if level > 0:
                u[src][:, :, m] = self._conv_row(net.downsample_u[level - 1].conv,
                                                 u[self._last_up[level - 1]], m, stride=2)[:, :, 0]
            for i, res in enumerate(net.up_u[level]):
                name = f"up{level}.{i}"
                out = self._u_res_row(res, u[src], u[name + ".c1"], m)
                u[name][:, :, m] = out[:, :, 0]
                ul_res = net.up_ul[level][i]
                self._row_bias[name][:, m] = _pm_rows(
                    F.conv2d(concat_elu(out), *self._w[ul_res.skip.conv])
                    + ul_res.conv1.conv.bias[:, None, None])
                src = name
            self.positions_computed[f"up{level}.u"] += self.sizes[level][1]
        for level in reversed(levels):
            m, block = row >> level, 2 - level
            src = self._top if level == 2 else f"down{level}.up"
            if level < 2:
                module = net.upsample_u[block - 1]
                deconv = module.deconv
                y = F.conv_transpose2d(u[self._last_down[level + 1]][:, :, m // 2: m // 2 + 1],
                                       *self._w[deconv], deconv.stride, deconv.padding,
                                       deconv.output_padding)
                u[src][:, :, m] = module._crop(y)[:, :, m % 2, : self.sizes[level][1]]
            for j, res in enumerate(net.down_u[block]):
                name = f"down{level}.{j}"
                skip = u[self._skips[block][j]][:, :, m: m + 1]
                out = self._u_res_row(res, u[src], u[name + ".c1"], m, skip)
                u[name][:, :, m] = out[:, :, 0]
                ul_res = net.down_ul[block][j]
                self._row_bias[name][:, m] = _pm_rows(
                    F.conv2d(concat_elu(out), self._skip_u[name], ul_res.skip.conv.bias)
                    + ul_res.conv1.conv.bias[:, None, None])
                src = name
            self.positions_computed[f"down{level}.u"] += self.sizes[level][1]

    # ul stream: one position of every map

    @staticmethod
    def _res_at(step: _Step, q: int, p: int) -> None:
        """One position of a down-right gated resnet: ``q`` its window index (see ``_Buf``),
        ``p`` its index in the level's map (row-major, unpadded)."""
        src, c1, at = step.src, step.c1, q + step.src.step
        if step.skip is None:
            inp = F.elu(src.win.select(1, q)).flatten(1)  # elu's output is contiguous
        else:
            inp = F.elu(torch.cat([src.win.select(1, q).flatten(1), step.skip.flat.select(1, at)], 1))
        torch.addmm(step.bias.select(1, p), inp, step.res.w1, out=c1.flat.select(1, at))
        gate_in, gate = torch.addmm(step.res.b2, F.elu(c1.win.select(1, q)).flatten(1),
                                    step.res.w2).chunk(2, 1)
        torch.addcmul(src.flat.select(1, at), gate_in, torch.sigmoid(gate),
                      out=step.dst.flat.select(1, at))

    @staticmethod
    def _res_1x1(res: _Res, x: Tensor, skip: Tensor | None = None) -> Tensor:
        """A 1x1 gated resnet at one position: [y, -y] ``[B, 2 I]`` -> [out, -out]."""
        inp = x if skip is None else torch.cat([x, skip], 1)
        c2 = torch.addmm(res.b2, F.elu(torch.addmm(res.b1, F.elu(inp), res.w1)), res.w2)
        half = 2 * res.channels
        return torch.addcmul(x, c2[:, :half], torch.sigmoid(c2[:, half:]))

    def _attention(self, attn: _Attention, m: int, n: int) -> None:
        """Position (m, n) of a causal attention block (full resolution): first the key and
        value of the previous pixel (whose value is now set), then the query of this one."""
        width, nf, c = self.sizes[0][1], self._nf, self.num_channels
        features, p = self._ul[attn.inp], m * width + n
        if p > 0:
            pm, pn = divmod(p - 1, width)
            v = torch.cat([self._xp[:, pm + 1, pn + 1, :c], features.at(pm, pn)[:, :nf],
                           self._pos[pm, pn]], 1)
            kv_in = self._res_1x1(attn.kv_res, torch.cat([v, -v], 1))[:, : v.shape[1]]
            torch.addmm(attn.b_kv, kv_in, attn.w_kv, out=attn.kv[:, p - 1])
        f = features.at(m, n)
        v = torch.cat([f[:, :nf], self._pos[m, n]], 1)
        q_in = self._res_1x1(attn.q_res, torch.cat([v, -v], 1))[:, : v.shape[1]]
        q = torch.addmm(attn.b_q, q_in, attn.w_q)
        if p == 0:
            out = torch.zeros_like(f)  # no past: the attention output is zero
        else:
            kv, d = attn.kv[:, :p], attn.attn_dim
            weights = torch.softmax(torch.bmm(q.unsqueeze(1), kv[:, :, :d].transpose(1, 2)), -1)
            out = torch.bmm(weights, kv[:, :, d:]).squeeze(1)
            out = torch.cat([out, -out], 1)
        self._ul[attn.out].at(m, n).copy_(self._res_1x1(attn.out_res, f, out))

    def _plan(self, direction: str, level: int) -> list[_Step]:
        """The resnets of block ``direction + level`` of the ul stream, wired to their buffers
        (the last one of a block followed by attention writes the attention's input)."""
        ul, nf = self._ul, self._nf
        if direction == "up":
            src = "up0.init" if level == 0 else f"up{level}.ds"
            n_res = len(self.net.up_ul[level])
        else:
            src = self._top if level == 2 else f"down{level}.up"
            n_res = len(self.net.down_ul[2 - level])
        steps = []
        for i in range(n_res):
            name = f"{direction}{level}.{i}"
            dst = name
            if level == 0 and i == n_res - 1 and direction in self._attn:
                dst = self._attn[direction].inp
            bias = self._row_bias[name]
            skip = ul[self._skips[2 - level][i]] if direction == "down" else None
            steps.append(_Step(self._ul_res[name], ul[src], ul[name + ".c1"], ul[dst],
                               bias.view(bias.shape[0], -1, 2 * nf), skip))
            src = dst
        return steps

    def _up_ul(self, level: int, m: int, n: int) -> None:
        """Position (m, n) of every up-pass ul map at ``level``: the first map (ul_init at full
        resolution, else the stride-2 downsampling), the resnets, the 'up' attention."""
        ul, width = self._ul, self.sizes[level][1]
        src = ul["up0.init" if level == 0 else f"up{level}.ds"]
        if level == 0:
            p = m * width + n
            if n == 0:  # right_shift: no left term in the first column
                src.at(m, 0).copy_(self._init_bias.select(1, p))
            else:
                window = self._xwin.select(1, m * (width + 2) + n).flatten(1)
                torch.addmm(self._init_left_bias.select(1, p), window, self._left[0],
                            out=src.at(m, n))
        else:
            w, bias = self._ds[level - 1]
            prev = ul[self._last_up[level - 1]]
            window = prev.win.select(1, 2 * m * prev.width + 2 * n).flatten(1)
            torch.addmm(bias, window, w, out=src.at(m, n))
        q, p = m * src.width + n, m * width + n
        for step in self._plans["up", level]:
            self._res_at(step, q, p)
        if level == 0 and "up" in self._attn:
            self._attention(self._attn["up"], m, n)
        self.positions_computed[_UL_STAGES["up", level]] += 1

    def _down_ul(self, level: int, m: int, n: int) -> None:
        """Position (m, n) of every down-pass ul map at ``level``: the upsampled coarser map
        (below level 2), the resnets, the 'down' attention."""
        ul, width = self._ul, self.sizes[level][1]
        src = ul[self._top if level == 2 else f"down{level}.up"]
        if level < 2:
            weights, bias = self._deconv[1 - level]
            prev = ul[self._last_down[level + 1]].at(m // 2, n // 2)
            torch.addmm(bias, prev, weights[m % 2][n % 2], out=src.at(m, n))
        q, p = m * src.width + n, m * width + n
        for step in self._plans["down", level]:
            self._res_at(step, q, p)
        if level == 0 and "down" in self._attn:
            self._attention(self._attn["down"], m, n)
        self.positions_computed[_UL_STAGES["down", level]] += 1
