"""Sparse convolutions: exact math against dense conv3d, spconv equivalence, gradients, maps."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ssl3d_ros.models.sparse as sparse
import ssl3d_ros.models.sparse_kernels as sparse_kernels
from ssl3d_ros.models.kernel_maps import (COORD_OFFSET, build_down_map, build_subm_map, check_coord_range,
                                         coarse_keys_of, downsample_coords, pack_keys, subm_map_from_coarse)
from ssl3d_ros.models.sparse import (SparseDownConv3d, SparseInverseConv3d, SubMConv3d, resolve_backend,
                                     spconv_available)
from ssl3d_ros.models.structure import SparseTensor

from builders import single_thread

needs_spconv = pytest.mark.skipif(not spconv_available("cpu"), reason="spconv is not installed")


def random_grid(seed: int, size: int = 7, batch: int = 2, density: float = 0.35, origin: int = -4):
    """Random occupied voxels of `batch` scans in a size^3 box starting at `origin` (negative coords too)."""
    g = torch.Generator().manual_seed(seed)
    occ = torch.rand(batch, size, size, size, generator=g) < density
    idx = occ.nonzero().int()
    coords = idx.clone()
    coords[:, 1:] += origin
    perm = torch.randperm(len(coords), generator=g)  # input order must not matter
    return coords[perm]


def to_dense(feats: torch.Tensor, coords: torch.Tensor, batch: int, size: int, origin: int) -> torch.Tensor:
    dense = feats.new_zeros((batch, feats.shape[1], size, size, size))
    c = coords.long()
    dense[c[:, 0], :, c[:, 1] - origin, c[:, 2] - origin, c[:, 3] - origin] = feats
    return dense


def at(dense: torch.Tensor, coords: torch.Tensor, origin: int) -> torch.Tensor:
    c = coords.long()
    return dense[c[:, 0], :, c[:, 1] - origin, c[:, 2] - origin, c[:, 3] - origin]


def torch_weight(conv) -> torch.Tensor:
    """spconv layout (C_out, kx, ky, kz, C_in) -> conv3d layout (C_out, C_in, kx, ky, kz)."""
    return conv.weight.permute(0, 4, 1, 2, 3)


@pytest.mark.parametrize("dense_limit", [1 << 30, 0], ids=["dense-gather", "per-offset"])
@pytest.mark.parametrize("kernel_size", [3, 5])
def test_subm_matches_dense_conv3d(monkeypatch, dense_limit, kernel_size):
    monkeypatch.setattr(sparse_kernels, "DENSE_GATHER_LIMIT", dense_limit)
    size, origin = 7, -4
    coords = random_grid(0, size, origin=origin)
    x = SparseTensor(torch.randn(len(coords), 3, dtype=torch.float64), coords, 2)
    conv = SubMConv3d(3, 5, kernel_size, bias=True, backend="torch").double()
    out = conv(x)
    ref = F.conv3d(to_dense(x.feats, coords, 2, size, origin), torch_weight(conv), conv.bias,
                   padding=kernel_size // 2)
    torch.testing.assert_close(out.feats, at(ref, coords, origin), rtol=1e-10, atol=1e-10)
    assert torch.equal(out.coords, coords)


def test_down_conv_matches_strided_conv3d():
    size, origin = 8, -4  # even origin and size: the dense grid's 2-blocks are floor(xyz / 2)
    coords = random_grid(1, size, origin=origin)
    x = SparseTensor(torch.randn(len(coords), 3, dtype=torch.float64), coords, 2)
    conv = SparseDownConv3d(3, 4, backend="torch").double()
    out = conv(x)
    coarse, _ = downsample_coords(coords)
    assert torch.equal(out.coords, coarse) and out.stride == 2
    ref = F.conv3d(to_dense(x.feats, coords, 2, size, origin), torch_weight(conv), stride=2)
    torch.testing.assert_close(out.feats, at(ref, coarse, origin // 2), rtol=1e-10, atol=1e-10)


def test_inverse_conv_matches_transposed_conv3d():
    size, origin = 8, -4
    coords = random_grid(2, size, origin=origin)
    fine = SparseTensor(torch.zeros(len(coords), 1, dtype=torch.float64), coords, 2)
    coarse_coords, _ = downsample_coords(coords)
    coarse = SparseTensor(torch.randn(len(coarse_coords), 4, dtype=torch.float64), coarse_coords, 2, 2, fine.cache)
    conv = SparseInverseConv3d(4, 3, 2, bias=True, backend="torch").double()
    out = conv(coarse, fine)
    assert torch.equal(out.coords, coords)
    dense = to_dense(coarse.feats, coarse_coords, 2, size // 2, origin // 2)
    ref = F.conv_transpose3d(dense, conv.weight.permute(4, 0, 1, 2, 3), conv.bias, stride=2)
    torch.testing.assert_close(out.feats, at(ref, coords, origin), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dense_limit", [1 << 30, 0], ids=["dense-gather", "per-offset"])
def test_subm_gradients_are_exact(monkeypatch, dense_limit):
    monkeypatch.setattr(sparse_kernels, "DENSE_GATHER_LIMIT", dense_limit)
    coords = random_grid(3, 5, density=0.4)
    conv = SubMConv3d(2, 3, backend="torch").double()
    cache: dict = {}

    def f(feats, weight, bias):
        m = sparse.subm_map(SparseTensor(feats, coords, 2, 1, cache), 3)
        return sparse_kernels.SubmConvFunction.apply(feats, weight.reshape(3, 27, 2).permute(1, 2, 0).contiguous(), bias, m)

    feats = torch.randn(len(coords), 2, dtype=torch.float64, requires_grad=True)
    weight = conv.weight.detach().clone().requires_grad_()
    bias = conv.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(f, (feats, weight, bias), fast_mode=True)


def test_down_and_inverse_gradients_are_exact():
    coords = random_grid(4, 6, density=0.4)
    down = SparseDownConv3d(2, 3, backend="torch").double()
    up = SparseInverseConv3d(3, 2, backend="torch").double()
    feats = torch.randn(len(coords), 2, dtype=torch.float64, requires_grad=True)

    def f(feats):
        x = SparseTensor(feats, coords, 2)
        return up(down(x), x).feats

    assert torch.autograd.gradcheck(f, (feats,), fast_mode=True)


def _kitti_level(shared_data, voxel: float = 0.2, radius: float = 20.0):
    pts = np.fromfile(shared_data / "lidar" / "kitti" / "004139.bin", dtype=np.float32).reshape(-1, 4)
    pts = pts[np.linalg.norm(pts[:, :2], axis=1) < radius]
    grid, first = np.unique(np.floor(pts[:, :3] / voxel).astype(np.int32), axis=0, return_index=True)
    coords = torch.from_numpy(np.concatenate([np.zeros((len(grid), 1), np.int32), grid], 1))
    return coords, torch.from_numpy(pts[first])


@needs_spconv
def test_backends_agree_per_conv_type_on_real_scan(shared_data):
    torch.manual_seed(0)
    coords, feats = _kitti_level(shared_data)
    x = SparseTensor(torch.randn(len(coords), 8), coords, 1)
    pairs = []
    for cls, kwargs in [(SubMConv3d, dict(kernel_size=3)), (SubMConv3d, dict(kernel_size=5, bias=False)),
                        (SparseDownConv3d, {})]:
        a = cls(8, 16, backend="torch", **kwargs)
        b = cls(8, 16, backend="spconv", **kwargs)
        b.load_state_dict(a.state_dict())  # one parameter layout for both backends
        pairs.append((a, b))
    with single_thread(), torch.no_grad():
        for a, b in pairs:
            ya, yb = a(x), b(x)
            assert torch.equal(ya.coords, yb.coords)
            torch.testing.assert_close(yb.feats, ya.feats, rtol=1e-4, atol=1e-5)
        a_up = SparseInverseConv3d(16, 8, backend="torch")
        b_up = SparseInverseConv3d(16, 8, backend="spconv")
        b_up.load_state_dict(a_up.state_dict())
        coarse = pairs[2][0](x)
        torch.testing.assert_close(b_up(coarse, x).feats, a_up(coarse, x).feats, rtol=1e-4, atol=1e-5)


def test_subm_map_matches_brute_force_neighbours(shared_data):
    coords, _ = _kitti_level(shared_data, voxel=0.3, radius=15.0)
    m = build_subm_map(coords, 3)
    keys = {tuple(c) for c in coords.tolist()}
    index = {tuple(c): i for i, c in enumerate(coords.tolist())}
    table = m.table.tolist()
    offsets = [(dx, dy, dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)]
    rows = range(0, len(coords), max(1, len(coords) // 300))  # a sample of rows, all 27 offsets each
    for i in rows:
        b, x, y, z = coords[i].tolist()
        for k, (dx, dy, dz) in enumerate(offsets):
            nb = (b, x + dx, y + dy, z + dz)
            expected = index[nb] if nb in keys else len(coords)
            assert table[i][k] == expected


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_derived_neighbour_table_equals_searched(shared_data, kernel_size):
    coords, _ = _kitti_level(shared_data, voxel=0.15, radius=25.0)
    coords = coords[torch.randperm(len(coords), generator=torch.Generator().manual_seed(0))]
    dm = build_down_map(coords)
    derived = subm_map_from_coarse(dm, build_subm_map(dm.coarse_coords, 3), kernel_size)
    assert torch.equal(derived.table, build_subm_map(coords, kernel_size).table)


def test_downsample_coords_floor_and_nesting():
    coords = random_grid(5, 9, origin=-5)
    coarse, parent = downsample_coords(coords, 2)
    expected = torch.cat([coords[:, :1], torch.div(coords[:, 1:], 2, rounding_mode="floor")], 1)
    assert torch.equal(coarse[parent], expected)
    assert len(torch.unique(pack_keys(coarse))) == len(coarse)
    # a subset's coarse voxels are a subset of the full set's
    sub = coords[::3]
    sub_coarse, _ = downsample_coords(sub, 2)
    assert set(map(tuple, sub_coarse.tolist())) <= set(map(tuple, coarse.tolist()))


@pytest.mark.parametrize("stride", [2, 4, 8, 3])
def test_coarse_keys_on_packed_keys_equal_packed_floor(stride):
    """The key-domain shift equals packing floor(xyz / stride), also for negative coordinates, at the
    ends of the supported range and for several scans (the batch bits must pass through unchanged)."""
    coords = random_grid(7, 9, batch=3, origin=-5)
    limit = COORD_OFFSET - 2
    ends = torch.tensor([[2, -limit, limit - 1, -1], [1, limit - 1, -limit, 0]], dtype=torch.int32)
    coords = torch.cat([coords, ends])
    expected = torch.cat([coords[:, :1], torch.div(coords[:, 1:], stride, rounding_mode="floor")], 1)
    assert torch.equal(coarse_keys_of(pack_keys(coords), stride), pack_keys(expected))


def test_down_map_caches_the_coarser_levels_keys():
    """The keys a down map computes become the coarser level's cached keys (its maps reuse them)."""
    coords = random_grid(8, 9, origin=-5)
    x = SparseTensor(torch.randn(len(coords), 4), coords, 2)
    y = SparseDownConv3d(4, 4, backend="torch")(x)
    assert torch.equal(sparse.level_keys(x), pack_keys(coords))
    assert y.cache[("keys", 2)] is sparse.down_map(x, 2).coarse_keys
    assert torch.equal(sparse.level_keys(y), pack_keys(y.coords))


def test_coord_range_check_names_the_problem():
    check_coord_range(torch.tensor([[0, COORD_OFFSET - 3, 0, 0]], dtype=torch.int32))
    with pytest.raises(ValueError, match="exceed the supported range"):
        check_coord_range(torch.tensor([[0, 0, -(COORD_OFFSET - 1), 0]], dtype=torch.int32))
    with pytest.raises(ValueError, match="batch index"):
        check_coord_range(torch.tensor([[-1, 0, 0, 0]], dtype=torch.int32))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("transpose,any_order", [(False, False), (False, True), (True, False)],
                         ids=["forward", "forward-unordered-pairs", "adjoint"])
@pytest.mark.parametrize("kind", ["subm", "down"])
def test_cpu_scatter_of_products_is_bit_equal_to_per_offset_puts(shared_data, kind, transpose, any_order, threads):
    """The CPU conv form (one buffer of products, one scatter-add) sums every output row's pairs in
    offset order, like the per-offset index_put loop that CUDA runs: bit-equal, at any thread count,
    also on the submanifold map's mirrored (unordered) pairs that inference uses."""
    coords, _ = _kitti_level(shared_data, voxel=0.15, radius=25.0)
    m = build_subm_map(coords, 3) if kind == "subm" else build_down_map(coords)
    rows_in, rows_out = m.num_voxels, m.num_voxels if kind == "subm" else m.coarse_coords.shape[0]
    if transpose:
        rows_in, rows_out = rows_out, rows_in
    g = torch.Generator().manual_seed(1)
    kvol = 27 if kind == "subm" else 8
    src = torch.randn(rows_in, 16, generator=g)
    w = torch.randn(kvol, 16, 16, generator=g)
    start = torch.randn(rows_out, 16, generator=g)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours = sparse_kernels._scatter_products(start.clone(), src, w, m, transpose, any_order)
        reference = sparse_kernels._put_per_offset(start.clone(), src, w, m, transpose)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(ours, reference)
    if any_order and kind == "subm":  # the mirrored pairs were used: same pairs per offset as the ordered ones
        m._pairs = None
        unordered = m.unordered_pairs()
        assert unordered[2] == m.counts
        start = 0
        for n in m.counts:
            pairs = lambda p: sorted(zip(p[0][start:start + n].tolist(), p[1][start:start + n].tolist()))
            assert pairs(unordered) == pairs((m.in_idx, m.out_idx))
            start += n


def test_maps_are_cached_per_level():
    coords = random_grid(6, 6)
    x = SparseTensor(torch.randn(len(coords), 4), coords, 2)
    a, b = SubMConv3d(4, 4, backend="torch"), SubMConv3d(4, 4, backend="torch")
    y = b(a(x))
    assert y.cache is x.cache and [k for k in x.cache if k[0] != "keys"] == [("subm", 1, 3)]
    m = x.cache[("subm", 1, 3)]
    SubMConv3d(4, 4, backend="torch")(y)
    assert x.cache[("subm", 1, 3)] is m


def test_resolve_backend():
    assert resolve_backend("torch", "cpu", False) == "torch"
    assert resolve_backend("auto", "cpu", True) == "torch"  # spconv's CPU wheel has no backward
    expected = "spconv" if spconv_available("cpu") and torch.get_num_threads() == 1 else "torch"
    assert resolve_backend("auto", "cpu", False) == expected
    with pytest.raises(ValueError):
        resolve_backend("cuda-magic", "cpu", False)
    if not spconv_available("cuda"):
        assert resolve_backend("auto", "cuda", False) == "torch"
        with pytest.raises(RuntimeError):
            resolve_backend("spconv", "cuda", False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_backend_on_cuda_matches_cpu():
    coords = random_grid(7, 7)
    x = SparseTensor(torch.randn(len(coords), 4), coords, 2)
    conv = SubMConv3d(4, 8, backend="torch")
    ref = conv(x).feats
    xc = SparseTensor(x.feats.cuda(), coords.cuda(), 2)
    torch.testing.assert_close(conv.cuda()(xc).feats.cpu(), ref, rtol=1e-4, atol=1e-4)
