"""The sparse encoder: backend equivalence on a real scan, learning, caching, masking, attention,
decoder, batching and configuration."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ssl3d_ros.models.sparse as sparse
from ssl3d_ros.config import ConfigError, from_dict, to_dict
from ssl3d_ros.models.encoder import EncoderConfig, SparseEncoder
from ssl3d_ros.models.kernel_maps import downsample_coords, pack_keys
from ssl3d_ros.models.sparse import spconv_available
from ssl3d_ros.models.structure import SparseTensor

from builders import single_thread


def voxelize(points: np.ndarray, voxel: float, batch: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Simple test voxelization: floor-divide, one point per voxel, features x, y, z, intensity."""
    grid, first = np.unique(np.floor(points[:, :3] / voxel).astype(np.int32), axis=0, return_index=True)
    coords = np.concatenate([np.full((len(grid), 1), batch, np.int32), grid], 1)
    return torch.from_numpy(coords), torch.from_numpy(points[first].astype(np.float32))


def load(shared_data, name: str, radius: float | None = None) -> np.ndarray:
    path = shared_data / "lidar" / name
    pts = np.fromfile(path, dtype=np.float32).reshape(-1, 4)
    pts = pts[np.isfinite(pts).all(1)]
    if radius is not None:
        pts = pts[np.linalg.norm(pts[:, :2], axis=1) < radius]
    return pts


def scan_tensor(shared_data, voxel=0.15, radius=25.0, name="kitti/004139.bin") -> SparseTensor:
    coords, feats = voxelize(load(shared_data, name, radius), voxel)
    return SparseTensor(feats, coords, 1)


def small_cfg(**overrides) -> EncoderConfig:
    base = dict(stage_channels=(16, 24, 32, 32), num_heads=(1, 1, 2, 2), decoder_channels=(8, 16, 16, 24),
                patch_size=32, backend="torch")
    base.update(overrides)
    return EncoderConfig.preset("nano", **base)


@pytest.mark.skipif(not spconv_available("cpu"), reason="spconv is not installed")
@pytest.mark.parametrize("overrides", [{}, {"stem_kernel": 3, "stem_depth": 1, "use_decoder": True}],
                         ids=["nano", "nano-conv-stem-decoder"])
def test_nano_encoder_same_outputs_on_both_backends(shared_data, overrides):
    torch.manual_seed(0)
    x = scan_tensor(shared_data, voxel=0.15, radius=None)  # the whole HDL-64 scan
    enc_t = SparseEncoder(EncoderConfig.preset("nano", backend="torch", **overrides)).eval()
    enc_s = SparseEncoder(EncoderConfig.preset("nano", backend="spconv", **overrides)).eval()
    enc_s.load_state_dict(enc_t.state_dict())  # identical weights, one state_dict layout
    with single_thread():
        out_t = enc_t.infer(SparseTensor(x.feats, x.coords, 1))
        out_s = enc_s.infer(SparseTensor(x.feats, x.coords, 1))
    assert len(out_t.levels) == 5
    for lt, ls in zip(out_t.levels, out_s.levels):
        assert torch.equal(lt.coords, ls.coords)
        scale = lt.feats.abs().max()
        assert (lt.feats - ls.feats).abs().max() <= 1e-4 * scale
    if overrides.get("use_decoder"):
        # decoder on a masked view, upsampling onto the full scene's hierarchy (spconv inverse convs)
        targets = [x.coords]
        for _ in range(4):
            targets.append(downsample_coords(targets[-1])[0])
        keep = torch.rand(len(x), generator=torch.Generator().manual_seed(1)) < 0.6
        with single_thread(), torch.no_grad():
            dec_t = enc_t.decode(enc_t(SparseTensor(x.feats[keep], x.coords[keep], 1)), targets)
            dec_s = enc_s.decode(enc_s(SparseTensor(x.feats[keep], x.coords[keep], 1)), targets)
        for dt, ds in zip(dec_t, dec_s):
            assert (dt.feats - ds.feats).abs().max() <= 1e-4 * dt.feats.abs().max()


def test_gradients_flow_and_optimisation_reduces_loss(shared_data):
    torch.manual_seed(0)
    x = scan_tensor(shared_data, voxel=0.3, radius=15.0)
    enc = SparseEncoder(small_cfg(use_decoder=True))
    target = torch.randn(len(x), 8)
    head = torch.nn.Linear(enc.decoder_channels[-1], 8)
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], lr=3e-3)
    losses = []
    for _ in range(6):
        out = enc(SparseTensor(x.feats, x.coords, 1, 1, x.cache))
        loss = torch.nn.functional.mse_loss(head(out.decoder_levels[-1].feats), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    stem_grad = enc.stem_conv.weight.grad
    assert stem_grad is not None and stem_grad.abs().sum() > 0
    assert all(p.grad is not None for n, p in enc.named_parameters() if not n.startswith("mask_token")
               and not n.startswith("decoder_mask_tokens"))
    assert losses[-1] < 0.9 * losses[0]


def test_kernel_maps_built_once_per_level(shared_data, monkeypatch):
    x = scan_tensor(shared_data, voxel=0.15, radius=20.0)
    builds = []
    search, derive = sparse.build_subm_map, sparse.subm_map_from_coarse

    def counting_search(coords, kernel_size=3, keys=None):
        builds.append(("search", coords.shape[0], kernel_size))
        return search(coords, kernel_size, keys)

    def counting_derive(down, coarse, kernel_size=3):
        builds.append(("derive", down.num_voxels, kernel_size))
        return derive(down, coarse, kernel_size)

    monkeypatch.setattr(sparse, "build_subm_map", counting_search)
    monkeypatch.setattr(sparse, "subm_map_from_coarse", counting_derive)
    enc = SparseEncoder(small_cfg(stage_depths=(2, 2, 2, 2), stem_kernel=3, stem_depth=1)).eval()
    with torch.no_grad():
        out = enc(x)
    sizes = [len(level) for level in out.levels]
    built = [n for _, n, _ in builds]
    assert sorted(built) == sorted(sizes)  # one 3^3 map per level, however many layers use it
    assert {kind for kind, _, _ in builds} == {"search", "derive"}  # large levels derive, small ones search
    assert sum(1 for k in x.cache if k[0] == "down") == 4
    builds.clear()
    with torch.no_grad():
        again = enc(x)  # same SparseTensor again: everything comes from its cache
    assert builds == []
    torch.testing.assert_close(enc.hypercolumn(again), enc.hypercolumn(out))


def test_mask_token_replaces_exactly_masked_inputs(shared_data):
    x = scan_tensor(shared_data, voxel=0.3, radius=15.0)
    enc = SparseEncoder(small_cfg()).eval()
    seen = []
    enc.stem_conv.register_forward_pre_hook(lambda mod, args: seen.append(args[0].feats.clone()))
    mask = torch.zeros(len(x), dtype=torch.bool)
    mask[::5] = True
    with torch.no_grad():
        out_plain = enc(x)
        out_masked = enc(x, mask=mask)
    plain, masked = seen
    assert torch.equal(plain, x.feats)
    assert torch.equal(masked[~mask], x.feats[~mask])
    assert torch.equal(masked[mask], enc.mask_token.detach().expand(int(mask.sum()), -1))
    assert not torch.allclose(out_plain.levels[0].feats[mask], out_masked.levels[0].feats[mask])


def test_attention_significance(shared_data):
    x = scan_tensor(shared_data, voxel=0.3, radius=15.0)
    enc = SparseEncoder(small_cfg()).eval()
    with torch.no_grad():
        assert enc(x).attention is None
        out = enc(x, need_attention=True)
    level = out.attention_level
    assert level == 4
    coarse = out.levels[level]
    assert out.attention.shape == (len(coarse),)
    assert (out.attention >= 0).all()
    # each patch's attention (averaged over queries) sums to one over its keys
    num_patches = int(torch.div(len(coarse) + 31, 32, rounding_mode="floor"))
    torch.testing.assert_close(out.attention.sum(), torch.tensor(float(num_patches)), rtol=1e-4, atol=1e-4)
    assert out.attention_at_level0().shape == (len(x),)


def test_decoder_shapes_with_and_without_targets(shared_data):
    torch.manual_seed(0)
    full = scan_tensor(shared_data, voxel=0.3, radius=15.0)
    enc = SparseEncoder(small_cfg(use_decoder=True)).eval()
    with torch.no_grad():
        out = enc(full)
    assert [d.feats.shape[1] for d in out.decoder_levels] == list(enc.decoder_channels)
    assert [len(d) for d in out.decoder_levels] == [len(lv) for lv in reversed(out.levels)]
    # MSM-style: the encoder sees a subset; the decoder runs on the full scene's hierarchy
    targets = [full.coords]
    for _ in range(4):
        targets.append(downsample_coords(targets[-1])[0])
    keep = torch.rand(len(full)) < 0.5
    visible = SparseTensor(full.feats[keep], full.coords[keep], 1)
    with torch.no_grad():
        out_v = enc(visible)
        dec = enc.decode(out_v, targets)
        dec_zero = enc.decode(out_v, targets, mask_token=False)
    assert [len(d) for d in dec] == [len(t) for t in reversed(targets)]
    for d, t in zip(dec, reversed(targets)):
        assert torch.equal(d.coords, t)
    # the coarsest decoder input: encoder features on kept voxels, the mask token elsewhere
    top = dec[0].feats
    rows = torch.searchsorted(pack_keys(targets[-1]), pack_keys(out_v.levels[-1].coords))
    assert torch.equal(top[rows], out_v.levels[-1].feats)
    missing = torch.ones(len(targets[-1]), dtype=torch.bool)
    missing[rows] = False
    if missing.any():
        assert torch.equal(top[missing][0], enc.decoder_mask_tokens[4].detach())
        assert (dec_zero[0].feats[missing] == 0).all()


def test_batch_of_two_equals_each_alone(shared_data):
    torch.manual_seed(0)
    a = scan_tensor(shared_data, voxel=0.3, radius=15.0)
    coords_b, feats_b = voxelize(load(shared_data, "ouster/OS-0-32-U1_v2.2.0_1024x10_frame00.xyzi.bin", 15.0), 0.3, 1)
    feats_b[:, 3] /= 255.0
    both = SparseTensor(torch.cat([a.feats, feats_b]), torch.cat([a.coords, coords_b]), 2)
    enc = SparseEncoder(small_cfg(use_decoder=True)).eval()
    with torch.no_grad():
        out_a = enc(a, need_attention=True)
        coords_b0 = coords_b.clone()
        coords_b0[:, 0] = 0
        out_b = enc(SparseTensor(feats_b, coords_b0, 1), need_attention=True)
        out_ab = enc(both, need_attention=True)
    # float32 through ~20 layers: matmul blocking differs with the row count, so allow ~1e-4; a leak
    # between scans (conv neighbours or attention patches) changes features at the 1e-1 scale
    tol = dict(rtol=1e-4, atol=1e-4)
    hyper_ab = enc.hypercolumn(out_ab)
    na = len(a)
    torch.testing.assert_close(hyper_ab[:na], enc.hypercolumn(out_a), **tol)
    torch.testing.assert_close(hyper_ab[na:], enc.hypercolumn(out_b), **tol)
    att_ab = out_ab.attention_at_level0()
    torch.testing.assert_close(att_ab[:na], out_a.attention_at_level0(), **tol)
    torch.testing.assert_close(att_ab[na:], out_b.attention_at_level0(), **tol)
    dec_ab = out_ab.decoder_levels[-1].feats
    torch.testing.assert_close(dec_ab[:na], out_a.decoder_levels[-1].feats, **tol)
    torch.testing.assert_close(dec_ab[na:], out_b.decoder_levels[-1].feats, **tol)


def test_hypercolumn_gathers_every_level(shared_data):
    x = scan_tensor(shared_data, voxel=0.3, radius=15.0)
    enc = SparseEncoder(small_cfg()).eval()
    with torch.no_grad():
        out = enc(x)
    hyper = enc.hypercolumn(out)
    assert hyper.shape == (len(x), enc.hypercolumn_channels)
    assert torch.equal(out.parents[0], torch.arange(len(x)))
    for level in range(1, 5):
        # a level-0 voxel's parent at level l contains it: floor division by 2^l
        expected = torch.div(x.coords[:, 1:], 2 ** level, rounding_mode="floor")
        assert torch.equal(out.levels[level].coords[out.parents[level], 1:], expected)
    assert torch.equal(enc.hypercolumn(out, levels=[2]), out.levels[2].feats[out.parents[2]])


def test_config_presets_and_overrides():
    sizes = {}
    for name in ("nano", "micro", "small", "base"):
        cfg = EncoderConfig.preset(name)
        assert cfg.size == name and len(cfg.stage_channels) == len(cfg.stage_depths) == 4
        sizes[name] = SparseEncoder(cfg).num_parameters()
    assert sizes["nano"] < sizes["micro"] < sizes["small"] < sizes["base"]
    cfg = from_dict(EncoderConfig, {"size": "base", "patch_size": 256, "stage_depths": [1, 1, 1, 1]})
    assert cfg.patch_size == 256 and cfg.stage_channels == EncoderConfig.preset("base").stage_channels
    assert from_dict(EncoderConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError):
        from_dict(EncoderConfig, {"size": "huge"})
    with pytest.raises(ValueError):
        EncoderConfig.preset("nano", attention_stages=(7,))
    with pytest.raises(ValueError):
        EncoderConfig.preset("nano", orders=("peano",))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_infer_fp16_on_cuda(shared_data):
    x = scan_tensor(shared_data, voxel=0.15, radius=30.0)
    enc = SparseEncoder(EncoderConfig.preset("nano")).cuda().eval()
    xc = SparseTensor(x.feats.cuda(), x.coords.cuda(), 1)
    ref = enc.infer(xc)
    half = enc.infer(SparseTensor(x.feats.cuda(), x.coords.cuda(), 1), dtype=torch.float16)
    for a, b in zip(ref.levels, half.levels):
        assert torch.isfinite(b.feats).all()
        torch.testing.assert_close(b.feats.float(), a.feats, rtol=0.05, atol=0.05)


def test_linear_map_of_the_levels_equals_the_map_of_the_hypercolumn(shared_data):
    torch.manual_seed(0)
    encoder = SparseEncoder(small_cfg()).eval()
    with torch.inference_mode():
        out = encoder(scan_tensor(shared_data))
        weight, bias = torch.randn(7, encoder.hypercolumn_channels), torch.randn(7)
        expected = encoder.hypercolumn(out) @ weight.T + bias
        got = encoder.linear_over_levels(out, weight, bias)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="input channels"):
        encoder.linear_over_levels(out, weight[:, 1:])
