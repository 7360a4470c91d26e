"""Hierarchical sparse voxel encoder: conv stem, residual stages with strided downsampling, serialized
patch attention at the coarse levels (PTv3-style), and an optional light decoder.

Level 0 is the stem's output on the input voxels; stage ``i`` (1-based level ``i``) starts with a
kernel-2 stride-2 conv onto ``downsample_coords`` of the previous level. Every level records which of
its voxels each level-0 voxel falls in (``parents``), so features of all levels gather back to the
input voxels (``hypercolumn``). All levels of one forward share one map cache (``SparseTensor.cache``).
Norms are LayerNorm: per voxel, so outputs never depend on the other scans of a batch or on train/eval
batch statistics (masked views shift those).
"""
from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping

import torch
from torch import nn

from ssl3d_ros.config import ConfigError, from_dict

from .attention import DropPath, SerializedAttentionBlock
from .kernel_maps import lookup, pack_keys
from .serialization import ORDERS
from .sparse import BACKENDS, SparseDownConv3d, SparseInverseConv3d, SubMConv3d
from .structure import SparseTensor

Size = Literal["nano", "micro", "small", "base"]

# Channels/depths per size. Voxel sizes assumed by the benchmarks: nano 0.15 m (CPU real time),
# the others 0.1 m. Attention only where levels are small (coarse), convs where they are large.
PRESETS: dict[str, dict] = {
    # nano: CPU real time. Level 0 is a per-voxel embedding (kernel 1: no level-0 neighbour search or
    # 3^3 conv, the largest level's cost); spatial context starts at level 1 and reaches level 0
    # through the hypercolumn. Bottleneck conv blocks, narrow positional convs, attention at levels 3-4.
    "nano": dict(stem_channels=16, stem_kernel=1, stem_depth=0, stage_channels=(32, 48, 64, 96),
                 stage_depths=(1, 1, 1, 1), attention_stages=(2, 3), patch_size=128, orders=("z", "z-trans"),
                 mlp_ratio=2.0, block="bottleneck", cpe_reduction=4, decoder_channels=(16, 32, 48, 64)),
    "micro": dict(stem_channels=24, stem_kernel=3, stem_depth=0, stage_channels=(48, 96, 160, 256),
                  stage_depths=(1, 1, 2, 1), attention_stages=(2, 3), patch_size=256, orders=("z", "z-trans"),
                  mlp_ratio=2.0, block="bottleneck", cpe_reduction=2, decoder_channels=(24, 48, 96, 160)),
    "small": dict(stem_channels=32, stem_kernel=3, stem_depth=1, stage_channels=(64, 128, 256, 384),
                  stage_depths=(2, 2, 2, 2), attention_stages=(1, 2, 3), patch_size=512,
                  orders=("z", "z-trans", "hilbert", "hilbert-trans"), mlp_ratio=3.0, block="basic",
                  cpe_reduction=1, decoder_channels=(32, 64, 128, 256)),
    "base": dict(stem_channels=48, stem_kernel=5, stem_depth=1, stage_channels=(96, 192, 384, 512),
                 stage_depths=(2, 2, 6, 2), attention_stages=(1, 2, 3), patch_size=1024,
                 orders=("z", "z-trans", "hilbert", "hilbert-trans"), mlp_ratio=4.0, block="basic",
                 cpe_reduction=1, decoder_channels=(64, 96, 192, 384)),
}
HEAD_DIM = 32
# Sanity limits far above every preset (base: 512 channels, depth 6, 4 stages, patches of 1024);
# they bound what an untrusted configuration can make the constructor do.
MAX_CHANNELS = 16384
MAX_DEPTH = 64
MAX_STAGES = 8
MAX_PATCH_SIZE = 1 << 16
MAX_MLP_RATIO = 16.0


@dataclass
class EncoderConfig:
    """Encoder architecture. ``size`` picks a preset; any field left None takes the preset's value, so
    ``{size: base, patch_size: 512}`` in YAML means "base with smaller patches"."""

    size: Size = "nano"
    in_channels: int = 4
    stem_channels: int | None = None
    stem_kernel: int | None = None
    stem_depth: int | None = None  # residual conv blocks at level 0 after the stem conv
    stage_channels: tuple[int, ...] | None = None
    stage_depths: tuple[int, ...] | None = None
    attention_stages: tuple[int, ...] | None = None  # 0-based stage indices using patch attention
    num_heads: tuple[int, ...] | None = None  # per stage (default channels // 32)
    patch_size: int | None = None
    orders: tuple[str, ...] | None = None  # serialization orders, cycled over attention blocks
    mlp_ratio: float | None = None
    block: Literal["basic", "bottleneck"] | None = None  # residual conv block of conv stages
    cpe_reduction: int | None = None  # positional-encoding conv runs on channels / cpe_reduction
    backend: str = "auto"  # "auto" | "torch" | "spconv"
    use_decoder: bool = False
    decoder_channels: tuple[int, ...] | None = None  # per level 0 .. num_stages-1
    drop_path: float = 0.0  # maximum stochastic depth rate (linear over blocks)

    def __post_init__(self) -> None:
        if self.size not in PRESETS:
            raise ValueError(f"unknown encoder size {self.size!r}; choose from {sorted(PRESETS)}")
        for name, value in PRESETS[self.size].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        for name in ("stage_channels", "stage_depths", "attention_stages", "orders", "decoder_channels",
                     "num_heads"):
            if getattr(self, name) is not None:
                setattr(self, name, tuple(getattr(self, name)))
        n = len(self.stage_channels)
        if self.num_heads is None:
            self.num_heads = tuple(max(1, c // HEAD_DIM) for c in self.stage_channels)
        if len(self.stage_depths) != n or len(self.num_heads) != n or len(self.decoder_channels) != n:
            raise ValueError("stage_channels, stage_depths, num_heads and decoder_channels need one entry per stage")
        if any(not 0 <= s < n for s in self.attention_stages):
            raise ValueError(f"attention_stages {self.attention_stages} out of range for {n} stages")
        self._check_sizes()
        for s in self.attention_stages:
            if self.stage_channels[s] % self.num_heads[s]:
                raise ValueError(f"stage {s}: {self.stage_channels[s]} channels do not split into {self.num_heads[s]} heads")
        if any(o not in ORDERS for o in self.orders) or not self.orders:
            raise ValueError(f"orders must be among {ORDERS}, got {self.orders}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.block not in BLOCKS:
            raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {self.block!r}")
        if self.stem_kernel not in (1, 3, 5):
            raise ValueError(f"stem_kernel must be 1, 3 or 5, got {self.stem_kernel}")

    def _check_sizes(self) -> None:
        """Every width, depth and ratio in range, so that building the modules cannot fail or allocate
        absurd amounts: a checkpoint's JSON document is untrusted input."""
        n = len(self.stage_channels)
        if not 1 <= n <= MAX_STAGES:
            raise ValueError(f"stage_channels: {n} stages, need 1..{MAX_STAGES}")
        widths = {"in_channels": (self.in_channels,), "stem_channels": (self.stem_channels,),
                  "stage_channels": self.stage_channels, "decoder_channels": self.decoder_channels,
                  "num_heads": self.num_heads}
        for name, values in widths.items():
            if any(not 1 <= v <= MAX_CHANNELS for v in values):
                raise ValueError(f"{name} {values}: every entry must be in 1..{MAX_CHANNELS}")
        for name, values in (("stem_depth", (self.stem_depth,)), ("stage_depths", self.stage_depths)):
            if any(not 0 <= v <= MAX_DEPTH for v in values):
                raise ValueError(f"{name} {values}: every entry must be in 0..{MAX_DEPTH}")
        if not 1 <= self.patch_size <= MAX_PATCH_SIZE:
            raise ValueError(f"patch_size must be in 1..{MAX_PATCH_SIZE}, got {self.patch_size}")
        if not 1 <= self.cpe_reduction <= MAX_CHANNELS:
            raise ValueError(f"cpe_reduction must be in 1..{MAX_CHANNELS}, got {self.cpe_reduction}")
        # an attention block's MLP has int(channels * mlp_ratio) hidden channels: at least 1, bounded
        if not (math.isfinite(self.mlp_ratio) and 0 < self.mlp_ratio <= MAX_MLP_RATIO
                and all(int(self.stage_channels[s] * self.mlp_ratio) >= 1 for s in self.attention_stages)):
            raise ValueError(f"mlp_ratio must be in (0, {MAX_MLP_RATIO}] and give attention stages at least one "
                             f"hidden channel, got {self.mlp_ratio}")
        if not (math.isfinite(self.drop_path) and 0.0 <= self.drop_path < 1.0):
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "EncoderConfig":
        return cls(size=name, **overrides)

    @property
    def num_levels(self) -> int:
        return len(self.stage_channels) + 1

    @property
    def level_channels(self) -> tuple[int, ...]:
        return (self.stem_channels, *self.stage_channels)


@dataclass
class EncoderOutput:
    levels: list[SparseTensor]  # level 0 = stem output on the input voxels, then one per stage
    parents: list[torch.Tensor]  # (M0,) level-0 voxel -> voxel row at each level; parents[0] = arange
    steps: list[torch.Tensor]  # (M_l,) level-l voxel -> its voxel row at level l + 1, one per stage
    attention: torch.Tensor | None = None  # (M_l,) attention received per voxel of `attention_level`
    attention_level: int | None = None  # the level `attention` refers to (deepest attention stage)
    decoder_levels: list[SparseTensor] | None = None  # decoder features, coarse -> fine

    def attention_at_level0(self) -> torch.Tensor | None:
        """Attention significance propagated to level-0 voxels."""
        if self.attention is None:
            return None
        return self.attention[self.parents[self.attention_level]]


class ResidualBlock(nn.Module):
    """Two 3x3x3 submanifold convs with LayerNorm and GELU, identity shortcut."""

    def __init__(self, channels: int, drop_path: float = 0.0, backend: str = "auto") -> None:
        super().__init__()
        self.conv1 = SubMConv3d(channels, channels, 3, bias=False, backend=backend)
        self.norm1 = nn.LayerNorm(channels)
        self.conv2 = SubMConv3d(channels, channels, 3, bias=False, backend=backend)
        self.norm2 = nn.LayerNorm(channels)
        self.act = nn.GELU()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: SparseTensor) -> SparseTensor:
        h = x.replace_feats(self.act(self.norm1(self.conv1(x).feats)))
        h = self.norm2(self.conv2(h).feats)
        batch = x.batch if self.drop_path.p > 0 and self.training else None
        return x.replace_feats(self.act(x.feats + self.drop_path(h, batch, x.batch_size)))


class BottleneckBlock(nn.Module):
    """Linear C -> C/2, 3x3x3 submanifold conv at C/2, Linear back: a quarter of a conv's cost at C."""

    def __init__(self, channels: int, drop_path: float = 0.0, backend: str = "auto") -> None:
        super().__init__()
        inner = max(1, channels // 2)
        self.reduce = nn.Linear(channels, inner, bias=False)
        self.norm1 = nn.LayerNorm(inner)
        self.conv = SubMConv3d(inner, inner, 3, bias=False, backend=backend)
        self.norm2 = nn.LayerNorm(inner)
        self.expand = nn.Linear(inner, channels, bias=False)
        self.norm3 = nn.LayerNorm(channels)
        self.act = nn.GELU()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: SparseTensor) -> SparseTensor:
        h = x.replace_feats(self.act(self.norm1(self.reduce(x.feats))))
        h = self.norm3(self.expand(self.act(self.norm2(self.conv(h).feats))))
        batch = x.batch if self.drop_path.p > 0 and self.training else None
        return x.replace_feats(self.act(x.feats + self.drop_path(h, batch, x.batch_size)))


BLOCKS = {"basic": ResidualBlock, "bottleneck": BottleneckBlock}


class Stage(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, depth: int, attention: bool, num_heads: int, patch_size: int,
                 orders: tuple[str, ...], order_start: int, mlp_ratio: float, drop_paths: list[float],
                 backend: str, block: str = "basic", cpe_reduction: int = 1) -> None:
        super().__init__()
        self.down = SparseDownConv3d(in_ch, out_ch, 2, 2, backend=backend)
        self.down_norm = nn.LayerNorm(out_ch)
        self.act = nn.GELU()
        self.attention = attention
        if attention:
            self.blocks = nn.ModuleList(
                SerializedAttentionBlock(out_ch, num_heads, patch_size, orders[(order_start + i) % len(orders)],
                                         mlp_ratio, drop_paths[i], backend, cpe_reduction)
                for i in range(depth))
        else:
            self.blocks = nn.ModuleList(BLOCKS[block](out_ch, drop_paths[i], backend) for i in range(depth))

    def forward(self, x: SparseTensor, need_attention: bool = False):
        y = self.down(x)
        y = y.replace_feats(self.act(self.down_norm(y.feats)))
        significance = None
        for i, block in enumerate(self.blocks):
            if self.attention:
                y, sig = block(y, need_attention and i == len(self.blocks) - 1)
                significance = sig if sig is not None else significance
            else:
                y = block(y)
        return y, significance


class DecoderLevel(nn.Module):
    """Upsample coarse -> fine, add a projected skip, norm, one residual block."""

    def __init__(self, coarse_ch: int, skip_ch: int, out_ch: int, backend: str, block: str = "basic") -> None:
        super().__init__()
        self.up = SparseInverseConv3d(coarse_ch, out_ch, 2, bias=False, backend=backend)
        self.skip = nn.Linear(skip_ch, out_ch)
        self.norm = nn.LayerNorm(out_ch)
        self.act = nn.GELU()
        self.block = BLOCKS[block](out_ch, 0.0, backend)

    def forward(self, coarse: SparseTensor, skip: SparseTensor) -> SparseTensor:
        up = self.up(coarse, skip)
        fused = up.replace_feats(self.act(self.norm(up.feats + self.skip(skip.feats))))
        return self.block(fused)


class SparseEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or EncoderConfig()
        self.cfg = cfg
        b = cfg.backend
        self.mask_token = nn.Parameter(torch.zeros(cfg.in_channels))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.stem_conv = SubMConv3d(cfg.in_channels, cfg.stem_channels, cfg.stem_kernel, bias=False, backend=b)
        self.stem_norm = nn.LayerNorm(cfg.stem_channels)
        self.stem_act = nn.GELU()
        total_blocks = cfg.stem_depth + sum(cfg.stage_depths)
        # on the CPU explicitly: under a torch.device("meta") context (shape checks) it must still give numbers
        rates = torch.linspace(0, cfg.drop_path, max(total_blocks, 1), device="cpu").tolist()
        self.stem_blocks = nn.ModuleList(BLOCKS[cfg.block](cfg.stem_channels, rates[i], b)
                                         for i in range(cfg.stem_depth))
        used = cfg.stem_depth
        self.stages = nn.ModuleList()
        in_ch = cfg.stem_channels
        attention_blocks = 0
        for s, (ch, depth) in enumerate(zip(cfg.stage_channels, cfg.stage_depths)):
            attn = s in cfg.attention_stages
            self.stages.append(Stage(in_ch, ch, depth, attn, cfg.num_heads[s], cfg.patch_size, cfg.orders,
                                     attention_blocks, cfg.mlp_ratio, rates[used:used + depth], b, cfg.block,
                                     cfg.cpe_reduction))
            attention_blocks += depth if attn else 0
            used += depth
            in_ch = ch
        self.decoder = None
        if cfg.use_decoder:
            level_ch = cfg.level_channels
            dec = cfg.decoder_channels
            self.decoder = nn.ModuleList()
            for level in range(cfg.num_levels - 2, -1, -1):  # coarse -> fine
                coarse_ch = level_ch[-1] if level == cfg.num_levels - 2 else dec[level + 1]
                self.decoder.append(DecoderLevel(coarse_ch, level_ch[level], dec[level], b, cfg.block))
            # tokens for voxels of the target hierarchy that the (masked) encoder input lacks
            self.decoder_mask_tokens = nn.ParameterList(
                nn.Parameter(torch.randn(c) * 0.02) for c in level_ch)

    # ------------------------------------------------------------ properties
    @property
    def out_channels(self) -> int:
        """Channels of the coarsest level."""
        return self.cfg.stage_channels[-1]

    @property
    def level_channels(self) -> tuple[int, ...]:
        return self.cfg.level_channels

    @property
    def hypercolumn_channels(self) -> int:
        return sum(self.cfg.level_channels)

    @property
    def decoder_channels(self) -> tuple[int, ...]:
        """Channels of ``decode``'s outputs, coarse -> fine (coarsest level first)."""
        return (self.cfg.stage_channels[-1], *reversed(self.cfg.decoder_channels))

    # ------------------------------------------------------------ forward
    def forward(self, x: SparseTensor, mask: torch.Tensor | None = None, need_attention: bool = False, *,
                run_decoder: bool = True) -> EncoderOutput:
        """Encode ``x``. ``mask`` (M,) bool: level-0 voxels whose input features become the mask token.
        ``need_attention``: also return the attention each voxel of the deepest attention level receives.
        ``run_decoder=False`` skips the decoder (for recipes that call ``decode(out, targets)`` instead)."""
        feats = x.feats
        if feats.shape[1] != self.cfg.in_channels:
            raise ValueError(f"encoder expects {self.cfg.in_channels} input channels, got {feats.shape[1]}")
        if mask is not None:
            if mask.shape != (len(x),) or mask.dtype != torch.bool:
                raise ValueError(f"mask must be a ({len(x)},) bool tensor, got {tuple(mask.shape)} {mask.dtype}")
            feats = torch.where(mask[:, None], self.mask_token.to(feats.dtype), feats)
        h = x.replace_feats(feats)
        h = h.replace_feats(self.stem_act(self.stem_norm(self.stem_conv(h).feats)))
        for block in self.stem_blocks:
            h = block(h)
        levels = [h]
        parents = [torch.arange(len(x), device=x.device)]
        steps = []
        attention = attention_level = None
        for s, stage in enumerate(self.stages):
            prev = h
            h, sig = stage(h, need_attention and s == max(self.cfg.attention_stages, default=-1))
            steps.append(prev.cache[("down", prev.stride, 2)].parent)
            parents.append(steps[-1].index_select(0, parents[-1]))
            levels.append(h)
            if sig is not None:
                attention, attention_level = sig, s + 1
        out = EncoderOutput(levels=levels, parents=parents, steps=steps, attention=attention,
                            attention_level=attention_level)
        if self.decoder is not None and run_decoder:
            out.decoder_levels = self.decode(out)
        return out

    def hypercolumn(self, out: EncoderOutput, levels: list[int] | tuple[int, ...] | None = None) -> torch.Tensor:
        """(M0, sum C) features of the chosen levels (default all) gathered back to level-0 voxels."""
        chosen = range(len(out.levels)) if levels is None else levels
        return torch.cat([out.levels[i].feats.index_select(0, out.parents[i]) for i in chosen], dim=1)

    def linear_over_levels(self, out: EncoderOutput, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``hypercolumn(out) @ weight.T + bias`` without building the hypercolumn.

        A linear map of the concatenated levels is the sum of each level's slice of it; applying each
        slice at its own level's (coarser) resolution and gathering only the K outputs costs a fraction
        of gathering every level's C channels to all level-0 voxels first. The sums are accumulated
        from the deepest level down, one level at a time (``steps``), so each gather and add has the
        rows of the finer level, not all of level 0's (an HDL-64 frame: 85k rows instead of 236k).
        Computed in fp32.
        """
        if weight.shape[1] != self.hypercolumn_channels:
            raise ValueError(f"weight has {weight.shape[1]} input channels, the hypercolumn {self.hypercolumn_channels}")
        ends = list(itertools.accumulate(level.feats.shape[1] for level in out.levels))
        result = None
        for index in reversed(range(len(out.levels))):
            start = ends[index - 1] if index else 0
            part = out.levels[index].feats.float() @ weight[:, start:ends[index]].float().T
            if result is not None:  # the coarser levels' sum, gathered to this level's voxels
                part.add_(result.index_select(0, out.steps[index]))
            result = part
        return result if bias is None else result.add_(bias.float())

    def decode(self, out: EncoderOutput, targets: list | None = None, mask_token: bool = True) -> list[SparseTensor]:
        """Upsample coarse -> fine with skips. Returns one SparseTensor per level, coarsest first
        (channels ``decoder_channels``), on the encoder's voxels or, with ``targets`` (per level 0..L,
        the full scene's voxels as coords or SparseTensors, e.g. from downsample_coords), on the target
        voxels, where voxels absent from the encoder input carry a learnable mask token per level."""
        if self.decoder is None:
            raise RuntimeError("decoder disabled: build the encoder with use_decoder=True")
        levels = out.levels
        n = len(levels)
        if targets is None:
            skips = levels
        else:
            if len(targets) != n:
                raise ValueError(f"targets need {n} levels, got {len(targets)}")
            shared: dict = {}
            skips = []
            for i, (t, enc) in enumerate(zip(targets, levels)):
                coords = t.coords if isinstance(t, SparseTensor) else t
                coords = coords.to(device=enc.device, dtype=torch.int32)
                rows = lookup(pack_keys(enc.coords), pack_keys(coords))
                if bool((rows < 0).any()):
                    raise ValueError(f"level {i}: encoder voxels are not a subset of the target voxels")
                if mask_token:
                    fill = self.decoder_mask_tokens[i].to(enc.feats.dtype).expand(coords.shape[0], -1).clone()
                else:
                    fill = enc.feats.new_zeros((coords.shape[0], enc.feats.shape[1]))
                fill = fill.index_put((rows,), enc.feats)
                skips.append(SparseTensor(fill, coords, enc.batch_size, enc.stride, shared))
        h = skips[-1]
        result = [h]
        for j, layer in enumerate(self.decoder):
            level = n - 2 - j
            h = layer(h, skips[level])
            result.append(h)
        return result

    # ------------------------------------------------------------ inference
    def infer(self, x: SparseTensor, dtype: torch.dtype | None = None, mask: torch.Tensor | None = None,
              need_attention: bool = False) -> EncoderOutput:
        """Forward under torch.inference_mode; ``dtype`` fp16/bf16 runs under autocast on CUDA."""
        if dtype is not None and dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"unsupported inference dtype {dtype}")
        use_autocast = dtype in (torch.float16, torch.bfloat16) and x.device.type == "cuda"
        ctx = torch.autocast("cuda", dtype=dtype) if use_autocast else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            return self.forward(x, mask=mask, need_attention=need_attention)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def encoder_config_from(data: Mapping[str, Any], where: str = "encoder", **overrides: Any) -> EncoderConfig:
    """EncoderConfig from plain data (a YAML section, a checkpoint's document) with ``overrides`` on top.

    Raises ConfigError naming ``where`` and the problem (EncoderConfig's own checks raise ValueError).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    try:
        return from_dict(EncoderConfig, {**data, **overrides}, where)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def build_encoder(cfg: EncoderConfig, device: str | torch.device | None = None) -> SparseEncoder:
    """The one way to build an encoder from its config (training, checkpoint loading, probes).

    ``device="meta"`` builds the module tree with shapes but no storage: what checkpoint validation
    compares stored tensors against before anything real is allocated.
    """
    if device is None:
        return SparseEncoder(cfg)
    with torch.device(device):
        return SparseEncoder(cfg)


__all__ = ["EncoderConfig", "EncoderOutput", "PRESETS", "SparseEncoder", "build_encoder", "encoder_config_from"]
