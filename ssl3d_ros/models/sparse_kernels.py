"""The torch backend's sparse-convolution arithmetic (what :mod:`.sparse`'s modules run when the
backend is ``torch``): gather-matmul-scatter over kernel-map pairs, deterministic, with hand-written
backward passes.

On CPU all pairs' products go into one buffer and one stable sorted scatter-add sums them (bit-equal to
the per-offset loop, which CUDA keeps: a scatter there is not deterministic); small submanifold levels
gather a dense neighbour matrix and run one matmul instead.
"""
from __future__ import annotations

import torch

from .kernel_maps import DownMap, SubmMap

def _offset_accumulate(out: torch.Tensor, src: torch.Tensor, w: torch.Tensor, m: SubmMap | DownMap,
                     transpose: bool, any_order: bool = False) -> torch.Tensor:
    """``out[o_k] += src[i_k] @ w[k]`` for every kernel offset k, in place.

    ``transpose`` runs the adjoint (roles of in/out swapped, ``w[k]`` transposed), which is the input
    gradient. On CPU: one gather of all pairs, the per-offset products into one buffer, one scatter-add
    (``_scatter_products``); elsewhere the per-offset index_put loop (``_put_per_offset``).
    ``any_order``: the CPU form may take the map's ``unordered_pairs`` (cheaper to build; the sums are
    the same bits): for forwards that no backward follows, which reuses the ordered pairs."""
    if out.device.type == "cpu":
        return _scatter_products(out, src, w, m, transpose, any_order)
    return _put_per_offset(out, src, w, m, transpose)


def _put_per_offset(out: torch.Tensor, src: torch.Tensor, w: torch.Tensor, m: SubmMap | DownMap,
                    transpose: bool) -> torch.Tensor:
    """Within one offset every output row occurs at most once, so the update is a gather, an addmm and an
    index_put without accumulation: parallel and deterministic, unlike a racy (atomic) scatter on CUDA."""
    src_idx, dst_idx = (m.out_idx, m.in_idx) if transpose else (m.in_idx, m.out_idx)
    gathered = src.index_select(0, src_idx)
    start = 0
    for k, n in enumerate(m.counts):  # loop over the k^3 kernel offsets, never over voxels
        if n == 0:
            continue
        rows = dst_idx[start:start + n]
        wk = w[k].t() if transpose else w[k]
        out.index_put_((rows,), torch.addmm(out.index_select(0, rows), gathered[start:start + n], wk))
        start += n
    return out


def _scatter_products(out: torch.Tensor, src: torch.Tensor, w: torch.Tensor, m: SubmMap | DownMap,
                      transpose: bool, any_order: bool = False) -> torch.Tensor:
    """The CPU form: one gather, the products, one scatter-add (no read-back of ``out`` per offset, and
    ~30 ops per conv instead of ~80: fewer parallel regions for the threads to meet at).

    torch's CPU scatter-add with an index expanded over the channels sorts the rows stably and sums each
    output row's pairs in pair order (offset order, whatever the order within an offset), so the result
    is deterministic and bit-equal to the per-offset loop (test_sparse_conv). Measured on the nano
    encoder's levels, 1 thread: 0-10 % less CPU time per submanifold conv, 10-15 % per strided conv."""
    in_idx, out_idx, counts = m.unordered_pairs() if any_order else (m.in_idx, m.out_idx, m.counts)
    src_idx, dst_idx = (out_idx, in_idx) if transpose else (in_idx, out_idx)
    gathered = src.index_select(0, src_idx)
    products = out.new_empty((gathered.shape[0], out.shape[1]))
    start = 0
    for k, n in enumerate(counts):  # loop over the k^3 kernel offsets, never over voxels
        if n:
            wk = w[k].t() if transpose else w[k]
            torch.mm(gathered[start:start + n], wk, out=products[start:start + n])
            start += n
    return out.scatter_add_(0, dst_idx.long()[:, None].expand(-1, out.shape[1]), products)


def _offset_weight_grad(grad_w: torch.Tensor, feats: torch.Tensor, grad_out: torch.Tensor,
                        m: SubmMap | DownMap) -> torch.Tensor:
    """``grad_w[k] = in[i_k].T @ grad_out[o_k]`` for every kernel offset k with pairs, in place."""
    fin = feats.index_select(0, m.in_idx)
    gout = grad_out.index_select(0, m.out_idx)
    start = 0
    for k, n in enumerate(m.counts):
        if n:
            grad_w[k] = fin[start:start + n].t() @ gout[start:start + n]
            start += n
    return grad_w


# Below this many gathered elements (voxels * kernel volume * channels) a conv gathers a dense
# (M, K * C_in) neighbour matrix and runs one matmul; above it, it loops over kernel offsets. On CPU
# the loop wins except on tiny levels (LiDAR voxels have 3-8 of 26 neighbours, the dense matmul pays
# for all 26); on CUDA the dense form wins while it fits (one GEMM instead of ~3 launches per offset).
DENSE_GATHER_LIMIT = 1 << 19
DENSE_GATHER_LIMIT_CUDA = 1 << 26


def _neighbour_table(m: SubmMap) -> torch.Tensor:
    return m.table


def _dense_gather(src: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    padded = torch.cat([src, src.new_zeros((1, src.shape[1]))])
    return padded.index_select(0, table.view(-1)).view(table.shape[0], -1)


class SubmConvFunction(torch.autograd.Function):
    """Submanifold conv on a SubmMap with a hand-written backward that reuses the same gather-based
    patterns (the map is symmetric, so the adjoint needs no second map)."""

    @staticmethod
    def forward(ctx, feats, w, bias, m, any_order=False):  # w: (K, C_in, C_out) contiguous
        kvol, cin, cout = w.shape
        centre = kvol // 2
        limit = DENSE_GATHER_LIMIT_CUDA if feats.is_cuda else DENSE_GATHER_LIMIT
        dense = m is not None and m.num_voxels * kvol * max(cin, cout) <= limit
        if dense:
            out = _dense_gather(feats, _neighbour_table(m)) @ w.view(kvol * cin, cout)
        else:
            out = feats @ w[centre]
            if m is not None:
                _offset_accumulate(out, feats, w, m, transpose=False, any_order=any_order)
        if bias is not None:
            out += bias
        ctx.save_for_backward(feats, w)
        ctx.m = m
        ctx.dense = dense
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        feats, w = ctx.saved_tensors
        m = ctx.m
        kvol, cin, cout = w.shape
        grad_out = grad_out.to(feats.dtype).contiguous()  # autocast may hand back a wider dtype
        centre = kvol // 2
        grad_feats = grad_w = grad_bias = None
        if ctx.dense:
            table = _neighbour_table(m)
            if ctx.needs_input_grad[0]:
                # grad_x[i] = sum_k W_k grad_out[nbr(i, -k)]: the flipped table gathers the adjoint
                flipped = w.flip(0).transpose(1, 2).reshape(kvol * cout, cin)
                grad_feats = _dense_gather(grad_out, table) @ flipped
            if ctx.needs_input_grad[1]:
                grad_w = (_dense_gather(feats, table).t() @ grad_out).view(kvol, cin, cout)
        else:
            if ctx.needs_input_grad[0]:
                grad_feats = grad_out @ w[centre].t()
                if m is not None:
                    _offset_accumulate(grad_feats, grad_out, w, m, transpose=True)
            if ctx.needs_input_grad[1]:
                grad_w = torch.zeros_like(w)
                grad_w[centre] = feats.t() @ grad_out
                if m is not None:
                    _offset_weight_grad(grad_w, feats, grad_out, m)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum(0)
        return grad_feats, grad_w, grad_bias, None, None


class DownConvFunction(torch.autograd.Function):
    """Kernel == stride conv on a DownMap: per kernel offset, gather the children at that offset,
    one matmul, put into their (distinct) parents. Only occupied children cost work (a dense
    (Mc, s^3 * C_in) gather would spend 3-4x the FLOPs on empty children)."""

    @staticmethod
    def forward(ctx, feats, w, dm):  # w: (K, C_in, C_out)
        out = feats.new_zeros((dm.coarse_coords.shape[0], w.shape[2]))
        _offset_accumulate(out, feats, w, dm, transpose=False)
        ctx.save_for_backward(feats, w)
        ctx.dm = dm
        return out

    @staticmethod
    def backward(ctx, grad_out):
        feats, w = ctx.saved_tensors
        dm = ctx.dm
        grad_out = grad_out.to(feats.dtype).contiguous()  # autocast may hand back a wider dtype
        grad_feats = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_feats = torch.zeros_like(feats)
            _offset_accumulate(grad_feats, grad_out, w, dm, transpose=True)
        if ctx.needs_input_grad[1]:
            grad_w = _offset_weight_grad(torch.zeros_like(w), feats, grad_out, dm)
        return grad_feats, grad_w, None


__all__ = ["DENSE_GATHER_LIMIT", "DENSE_GATHER_LIMIT_CUDA", "SubmConvFunction", "DownConvFunction"]
