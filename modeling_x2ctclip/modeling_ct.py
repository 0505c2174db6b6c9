"""The CT tower of X2CT-CLIP: the encoder path of CT-CLIP's CTViT, weight-compatible with CT-CLIP checkpoints.

A CT volume ``ct_values`` (B, 1, D, H, W), HU / 1000 clipped to [-1, 1] at 1.5 mm (D) x 0.75 mm x 0.75 mm, is cut into
``temporal_patch_size x patch_size x patch_size`` voxel patches. The resulting token grid (B, t, h, w, dim) with
``t = D / temporal_patch_size`` and ``h = w = image_size / patch_size`` goes through

1. a patch embedding (LayerNorm, Linear, LayerNorm; or, with ``patch_embedding="conv"``, a strided convolutional
   stem for small towers trained from scratch),
2. a spatial transformer that attends within each slab of ``temporal_patch_size`` slices, over its ``h * w`` tokens,
   with a continuous relative position bias,
3. a temporal transformer that attends along the ``t`` axis, one sequence per in-plane position,
4. the cosine-similarity vector quantiser (eval mode: every token is replaced by its nearest code),

and is pooled as CT-CLIP does: mean over ``t``, then flattened to ``h * w * dim`` features.

Every layer is ``x + PEG(x)``, ``x + Attention(x)``, ``x + FeedForward(x)``. The details that matter to reproduce the
published weights, all kept on purpose:

- attention normalises the queries' input only (LayerNorm whose bias is fixed at zero); keys and values are projected
  from the un-normalised input. Queries and keys are L2-normalised, scaled per channel by the learned ``q_scale`` /
  ``k_scale`` and their dot products multiplied by a fixed ``attn_logit_scale`` (8). CT-CLIP's self-attention has no
  null key/value (its ``null_kv`` tensors are empty).
- the PEG (a depthwise 3x3x3 convolution, zero padding, causal (2, 0) along the first grid axis) views the flat tokens
  as ``(b, t, h, w)``. In the temporal transformer the tokens are laid out ``(b h w) t``, so this view mixes up the
  axes; CT-CLIP was trained that way and so is this model (see :meth:`X2CTCLIPCTPositionalConvolution.forward`).
- the quantiser returns the stored code vectors themselves, not normalised tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import ModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_x2ctclip import X2CTCLIPCTConfig

# Tokens compared with the whole codebook at once by the quantiser; bounds its (tokens x codebook_size) similarity
# matrix (4096 x 8192 float32 = 128 MiB for the official codebook) whatever the volume size.
_VQ_CHUNK = 4096


@dataclass
class X2CTCLIPCTModelOutput(ModelOutput):
    r"""Output of :class:`X2CTCLIPCTModel`.

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(B, t, h, w, dim)`):
            the token grid after the vector quantiser (each token is a codebook vector when ``config.use_vq``), with
            ``t = D / temporal_patch_size`` and ``h = w = image_size / patch_size``.
        pooler_output (`torch.FloatTensor` of shape `(B, h * w * dim)`):
            ``last_hidden_state`` averaged over ``t`` and flattened in ``(h, w, dim)`` order, the input of CT-CLIP's
            ``to_visual_latent`` projection (``config.pooled_dim`` wide).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with ``output_hidden_states=True``):
            ``1 + spatial_depth + temporal_depth`` tensors of shape `(B, t, h, w, dim)`: the patch embeddings, then
            the output of every spatial and every temporal layer (before its transformer's final LayerNorm).
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned with ``output_attentions=True`` under
            ``attn_implementation="eager"``): ``spatial_depth`` tensors of shape `(B, t, heads, h * w, h * w)` (each
            slab's in-plane tokens, row-major ``(h, w)``), then ``temporal_depth`` tensors of shape
            `(B, h * w, heads, t, t)` (each in-plane position's sequence along depth); softmax weights, queries on
            rows.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class X2CTCLIPCTPatchEmbeddings(nn.Module):
    """Voxel patches -> tokens: (B, c, t*pt, h*p, w*p) -> (B, t, h, w, dim) through LayerNorm, Linear, LayerNorm.

    A patch is flattened in ``(c, pt, p1, p2)`` order (channel slowest, in-plane column fastest), as CT-CLIP does.
    """

    def __init__(self, config: X2CTCLIPCTConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.temporal_patch_size = config.temporal_patch_size
        patch_dim = config.channels * config.temporal_patch_size * config.patch_size**2
        self.patch_norm = nn.LayerNorm(patch_dim)
        self.projection = nn.Linear(patch_dim, config.dim)
        self.norm = nn.LayerNorm(config.dim)

    def forward(self, ct_values: torch.Tensor) -> torch.Tensor:
        b, c, d, hh, ww = ct_values.shape
        pt, p = self.temporal_patch_size, self.patch_size
        t, h, w = d // pt, hh // p, ww // p
        patches = ct_values.reshape(b, c, t, pt, h, p, w, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
        patches = patches.reshape(b, t, h, w, c * pt * p * p)
        return self.norm(self.projection(self.patch_norm(patches)))


class X2CTCLIPCTConvPatchEmbeddings(nn.Module):
    """Voxels -> tokens through a strided convolutional stem (``patch_embedding="conv"``): (B, c, t*pt, h*p, w*p)
    -> (B, t, h, w, dim), the same token grid as :class:`X2CTCLIPCTPatchEmbeddings`.

    Each of the ``stem_channels`` layers is a 3x3x3 convolution (padding 1) and GELU whose stride is 2 along every
    axis whose remaining patch factor is even (1 otherwise); a last convolution with kernel = stride = the remaining
    factors makes the tokens, then LayerNorm. The nonlinearity before the patch is pooled is the point: a 6 mm
    calcification in a 96 mm patch gives the same response wherever it lies.
    """

    def __init__(self, config: X2CTCLIPCTConfig):
        super().__init__()
        remaining = [config.temporal_patch_size, config.patch_size, config.patch_size]
        layers: list[nn.Module] = []
        channels = config.channels
        for out_channels in config.stem_channels:
            stride = tuple(2 if r % 2 == 0 else 1 for r in remaining)
            remaining = [r // s for r, s in zip(remaining, stride)]
            layers += [nn.Conv3d(channels, out_channels, 3, stride=stride, padding=1), nn.GELU()]
            channels = out_channels
        self.stem = nn.Sequential(*layers)
        self.projection = nn.Conv3d(channels, config.dim, tuple(remaining), stride=tuple(remaining))
        for layer in (*self.stem, self.projection):
            layer.he_init = True  # read by X2CTCLIPCTPreTrainedModel._init_weights
        self.norm = nn.LayerNorm(config.dim)

    def forward(self, ct_values: torch.Tensor) -> torch.Tensor:
        tokens = self.projection(self.stem(ct_values))  # (B, dim, t, h, w)
        return self.norm(tokens.permute(0, 2, 3, 4, 1))


class X2CTCLIPCTContinuousPositionBias(nn.Module):
    """Attention bias of the spatial transformer, one per head, from the 2-D offset between two in-plane tokens.

    An MLP (``Linear(2, dim)``, ``Linear(dim, dim)``, each followed by LeakyReLU(0.1), then ``Linear(dim, heads)``)
    reads the offset ``(dy, dx)`` compressed as ``sign(x) * log(1 + |x|)``. The MLP runs once per distinct offset
    ((2h-1)(2w-1) of them) and the result is gathered into the (heads, h*w, h*w) bias, which is what CT-CLIP computes
    for every token pair, without its (h*w)^2 x dim intermediates (about 1.9 GB peak at 24 x 24 tokens, in float32;
    see benchmarks/bench_ct_model.py).
    """

    def __init__(self, config: X2CTCLIPCTConfig):
        super().__init__()
        hidden = config.dim
        self.mlp = nn.ModuleList(
            [nn.Linear(2, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, config.heads)]
        )
        self.activation = nn.LeakyReLU(0.1)

    def forward(self, height: int, width: int) -> torch.Tensor:
        """Bias of shape (heads, height * width, height * width); query tokens on rows, keys on columns."""
        weight = self.mlp[0].weight
        device = weight.device
        dy = torch.arange(-(height - 1), height, device=device)
        dx = torch.arange(-(width - 1), width, device=device)
        offsets = torch.stack(torch.meshgrid(dy, dx, indexing="ij"), dim=-1).reshape(-1, 2).to(weight.dtype)
        hidden = torch.sign(offsets) * torch.log1p(offsets.abs())
        for layer in self.mlp[:-1]:
            hidden = self.activation(layer(hidden))
        table = self.mlp[-1](hidden)  # ((2h-1)(2w-1), heads)

        ys, xs = torch.meshgrid(
            torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
        )
        ys, xs = ys.reshape(-1), xs.reshape(-1)
        index = (ys[:, None] - ys[None, :] + height - 1) * (2 * width - 1) + (xs[:, None] - xs[None, :] + width - 1)
        return table[index].permute(2, 0, 1)


class X2CTCLIPCTPositionalConvolution(nn.Module):
    """Position-generating convolution (PEG): a depthwise 3x3x3 convolution over the token grid, causal on its first axis.

    The caller adds the result to its input (the residual is not included here).
    """

    def __init__(self, config: X2CTCLIPCTConfig):
        super().__init__()
        self.conv = nn.Conv3d(config.dim, config.dim, kernel_size=3, groups=config.dim)

    def forward(self, hidden_states: torch.Tensor, grid_shape: tuple[int, int, int, int]) -> torch.Tensor:
        """``hidden_states`` (N, L, dim) with N * L = b * t * h * w; ``grid_shape`` = (b, t, h, w).

        The flat tokens are *viewed* (not permuted) as (b, t, h, w, dim). In the spatial transformer they are laid out
        ``(b t) (h w)`` and the view is the true grid. In the temporal transformer they are laid out ``(b h w) t``, so
        the convolution sees the memory order (h, w, t) under the names (t, h, w): the causal padding then falls on
        ``h`` and the kernel slides across mixed axes. CT-CLIP's weights were trained with this view; it is kept.
        """
        n, length, dim = hidden_states.shape
        grid = hidden_states.reshape(*grid_shape, dim).permute(0, 4, 1, 2, 3)
        # (left, right) pads for the last three axes: w and h symmetric, the first grid axis causal (2 before, 0 after).
        grid = F.pad(grid, (1, 1, 1, 1, 2, 0))
        grid = self.conv(grid)
        return grid.permute(0, 2, 3, 4, 1).reshape(n, length, dim)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit ``softmax(scaling * q k^T + attention_mask) v`` (transformers' eager attention), returning the weights.

    ``query`` / ``key`` / ``value`` (N, heads, L, head_dim), ``attention_mask`` an additive float bias broadcastable
    to (N, heads, L, L) -> output (N, L, heads, head_dim) and weights (N, heads, L, L).
    """
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class X2CTCLIPCTAttention(nn.Module):
    """CT-CLIP's cosine-similarity self-attention.

    ``q = W_q LayerNorm(x)`` and ``k, v = W_k x, W_v x`` (keys and values read the *un-normalised* input);
    ``logits = attn_logit_scale * <q / |q| * q_scale, k / |k| * k_scale> + bias``. All projections are bias-free.
    The softmax-weighted sum runs through ``config._attn_implementation`` (``"sdpa"`` by default, or ``"eager"``,
    which also returns the attention weights), as in transformers' own models.
    """

    is_causal = False  # read by transformers' SDPA interface: no causal mask, the bias is the only mask

    def __init__(self, config: X2CTCLIPCTConfig):
        super().__init__()
        self.config = config
        self.heads = config.heads
        self.head_dim = config.dim_head
        self.logit_scale = float(config.attn_logit_scale)
        inner = config.heads * config.dim_head
        # CT-CLIP's LayerNorm keeps its bias at zero (a buffer, never trained): a bias-free LayerNorm is the same map.
        self.norm = nn.LayerNorm(config.dim, bias=False)
        self.q_proj = nn.Linear(config.dim, inner, bias=False)
        self.k_proj = nn.Linear(config.dim, inner, bias=False)
        self.v_proj = nn.Linear(config.dim, inner, bias=False)
        self.q_scale = nn.Parameter(torch.ones(config.dim_head))
        self.k_scale = nn.Parameter(torch.ones(config.dim_head))
        self.out_proj = nn.Linear(inner, config.dim, bias=False)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        return x.reshape(n, length, self.heads, self.head_dim).transpose(1, 2)

    def forward(
        self, hidden_states: torch.Tensor, attn_bias: torch.Tensor | None = None, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``hidden_states`` (N, L, dim); ``attn_bias`` (heads, L, L) or None -> ((N, L, dim), weights or None).

        The weights (N, heads, L, L) are returned with ``output_attentions`` under eager attention.
        """
        q = self._split_heads(self.q_proj(self.norm(hidden_states)))
        k = self._split_heads(self.k_proj(hidden_states))
        v = self._split_heads(self.v_proj(hidden_states))
        q = F.normalize(q, dim=-1) * self.q_scale
        k = F.normalize(k, dim=-1) * self.k_scale
        if attn_bias is not None:
            attn_bias = attn_bias.to(q.dtype).unsqueeze(0)
        # Both compute softmax(scale * q k^T + bias) v: the fixed logit scale is the `scaling`, the additive position
        # bias the float `attention_mask` (SDPA adds a float mask to the logits).
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, weights = interface(self, q, k, v, attn_bias, scaling=self.logit_scale, dropout=0.0)
        n, length = out.shape[:2]
        out = self.out_proj(out.reshape(n, length, self.heads * self.head_dim))
        return out, (weights if output_attentions else None)


class X2CTCLIPCTFeedForward(nn.Module):
    """LayerNorm, bias-free Linear to 2 x inner, GEGLU (``x * gelu(gate)``), bias-free Linear back to dim.

    ``inner = int(ff_mult * 2 / 3 * dim)`` (1365 for dim 512).
    """

    def __init__(self, config: X2CTCLIPCTConfig):
        super().__init__()
        inner = int(config.ff_mult * (2 / 3) * config.dim)
        self.norm = nn.LayerNorm(config.dim)
        self.fc_in = nn.Linear(config.dim, 2 * inner, bias=False)
        self.fc_out = nn.Linear(inner, config.dim, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x, gate = self.fc_in(self.norm(hidden_states)).chunk(2, dim=-1)
        return self.fc_out(x * F.gelu(gate))


class X2CTCLIPCTLayer(GradientCheckpointingLayer):
    """One CTViT layer: ``x += PEG(x)``, ``x += Attention(x)``, ``x += FeedForward(x)``."""

    def __init__(self, config: X2CTCLIPCTConfig):
        super().__init__()
        self.peg = X2CTCLIPCTPositionalConvolution(config)
        self.attention = X2CTCLIPCTAttention(config)
        self.feed_forward = X2CTCLIPCTFeedForward(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        grid_shape: tuple[int, int, int, int],
        attn_bias: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden_states = hidden_states + self.peg(hidden_states, grid_shape)
        attn_out, weights = self.attention(hidden_states, attn_bias, output_attentions)
        hidden_states = hidden_states + attn_out
        return hidden_states + self.feed_forward(hidden_states), weights


class X2CTCLIPCTTransformer(nn.Module):
    """A stack of :class:`X2CTCLIPCTLayer` followed by a bias-free LayerNorm (``norm_out``)."""

    def __init__(self, config: X2CTCLIPCTConfig, depth: int):
        super().__init__()
        self.layers = nn.ModuleList([X2CTCLIPCTLayer(config) for _ in range(depth)])
        self.norm_out = nn.LayerNorm(config.dim, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        grid_shape: tuple[int, int, int, int],
        attn_bias: torch.Tensor | None = None,
        all_hidden_states: list[torch.Tensor] | None = None,
        to_grid=None,
        all_attentions: list[torch.Tensor] | None = None,
        to_batch=None,
    ) -> torch.Tensor:
        """``hidden_states`` (N, L, dim). When ``all_hidden_states`` is a list, ``to_grid(x)`` of every layer output
        is appended to it; when ``all_attentions`` is a list, ``to_batch(w)`` of every layer's attention weights."""
        for layer in self.layers:
            hidden_states, weights = layer(hidden_states, grid_shape, attn_bias, all_attentions is not None)
            if all_hidden_states is not None:
                all_hidden_states.append(to_grid(hidden_states))
            if all_attentions is not None:
                all_attentions.append(to_batch(weights))
        return self.norm_out(hidden_states)


class X2CTCLIPCTVectorQuantizer(nn.Module):
    """Cosine-similarity vector quantiser of CT-CLIP in eval mode (no codebook update, no commitment loss).

    Each token is matched to the code of highest cosine similarity and replaced by that code *as stored* (the codebook
    of a CT-CLIP checkpoint holds unit vectors, so the output tokens have unit norm). ``codebook`` (codebook_size, dim)
    is a buffer: CT-CLIP updates it by exponential moving averages, never by gradients.
    """

    def __init__(self, config: X2CTCLIPCTConfig):
        super().__init__()
        self.register_buffer("codebook", torch.empty(config.codebook_size, config.dim))

    def code_indices(self, tokens: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code (by cosine similarity) of every token; ``tokens`` (..., dim) -> (...)."""
        flat = F.normalize(tokens.reshape(-1, tokens.shape[-1]), dim=-1)
        codes = F.normalize(self.codebook, dim=-1).to(flat.dtype)
        # Chunked so that the similarity matrix stays small; each token's argmax is independent of the others.
        indices = torch.cat([(chunk @ codes.t()).argmax(dim=-1) for chunk in flat.split(_VQ_CHUNK)])
        return indices.reshape(tokens.shape[:-1])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., dim): every token replaced by its nearest code vector.

        In training mode the gradient passes straight through to ``tokens`` (the codes' value, the tokens' gradient),
        as in CT-CLIP; in eval mode the output is exactly the stored codes.
        """
        codes = F.embedding(self.code_indices(tokens), self.codebook).to(tokens.dtype)
        if self.training:
            codes = tokens + (codes - tokens).detach()
        return codes


class X2CTCLIPCTPreTrainedModel(PreTrainedModel):
    config: X2CTCLIPCTConfig
    config_class = X2CTCLIPCTConfig
    base_model_prefix = "ct_model"
    main_input_name = "ct_values"
    input_modalities = ("video",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["X2CTCLIPCTLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        # Linear / Conv3d: normal(initializer_range), zero bias; LayerNorm: ones / zeros (the base class).
        if isinstance(module, nn.Conv3d) and getattr(module, "he_init", False):
            # He initialisation for the GELU stem: normal(0.02) over 27-432 inputs would shrink the signal tenfold
            # per layer.
            init.kaiming_normal_(module.weight, nonlinearity="relu")
            init.zeros_(module.bias)
            return
        super()._init_weights(module)
        if isinstance(module, X2CTCLIPCTAttention):
            init.ones_(module.q_scale)
            init.ones_(module.k_scale)
        elif isinstance(module, X2CTCLIPCTVectorQuantizer):
            # Random unit codes, as CT-CLIP starts its cosine codebook.
            codes = torch.randn(module.codebook.shape, dtype=torch.float32)
            init.copy_(module.codebook, F.normalize(codes, dim=-1).to(module.codebook.dtype))


class X2CTCLIPCTModel(X2CTCLIPCTPreTrainedModel):
    """The CT-CLIP CT encoder (CTViT encoder path + vector quantiser + CT-CLIP pooling).

    Example:

    ```python
    >>> import torch
    >>> from x2ctclip import X2CTCLIPCTConfig
    >>> from x2ctclip.modeling_ct import X2CTCLIPCTModel
    >>> config = X2CTCLIPCTConfig(dim=32, codebook_size=16, image_size=16, patch_size=8, temporal_patch_size=4,
    ...                           num_frames=8, spatial_depth=1, temporal_depth=1, heads=2, dim_head=8)
    >>> model = X2CTCLIPCTModel(config).eval()
    >>> out = model(torch.zeros(1, 1, 8, 16, 16))
    >>> tuple(out.last_hidden_state.shape), tuple(out.pooler_output.shape)
    ((1, 2, 2, 2, 32), (1, 128))
    ```
    """

    def __init__(self, config: X2CTCLIPCTConfig):
        super().__init__(config)
        self.embeddings = (X2CTCLIPCTConvPatchEmbeddings(config) if config.patch_embedding == "conv"
                           else X2CTCLIPCTPatchEmbeddings(config))
        self.spatial_position_bias = X2CTCLIPCTContinuousPositionBias(config)
        self.spatial_encoder = X2CTCLIPCTTransformer(config, config.spatial_depth)
        self.temporal_encoder = X2CTCLIPCTTransformer(config, config.temporal_depth)
        self.quantizer = X2CTCLIPCTVectorQuantizer(config) if config.use_vq else None
        self.gradient_checkpointing = False
        self.post_init()

    def _check_input(self, ct_values: torch.Tensor) -> None:
        config = self.config
        if not isinstance(ct_values, torch.Tensor) or ct_values.dim() != 5:
            shape = tuple(ct_values.shape) if isinstance(ct_values, torch.Tensor) else type(ct_values).__name__
            raise ValueError(f"ct_values must be a 5-D tensor (B, {config.channels}, D, H, W), got {shape}.")
        if not ct_values.is_floating_point():
            raise ValueError(f"ct_values must be a floating point tensor (HU / 1000 in [-1, 1]), got {ct_values.dtype}.")
        _, c, d, h, w = ct_values.shape
        if c != config.channels:
            raise ValueError(f"ct_values has {c} channels, this CT model expects {config.channels} (shape (B, C, D, H, W)).")
        if d == 0 or d % config.temporal_patch_size != 0:
            raise ValueError(
                f"ct_values depth D = {d} slices must be a positive multiple of temporal_patch_size = "
                f"{config.temporal_patch_size} (e.g. {config.num_frames})."
            )
        if h != config.image_size or w != config.image_size:
            raise ValueError(
                f"ct_values in-plane size {h} x {w} must be image_size x image_size = "
                f"{config.image_size} x {config.image_size} (the position bias and the pooled width depend on it)."
            )

    def forward(
        self,
        ct_values: torch.FloatTensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> X2CTCLIPCTModelOutput | tuple:
        r"""Encode CT volumes.

        Args:
            ct_values (`torch.FloatTensor` of shape `(B, channels, D, H, W)`): HU / 1000 clipped to [-1, 1], D a
                multiple of ``temporal_patch_size`` (slices of 1.5 mm), H = W = ``image_size`` (0.75 mm voxels).
            output_hidden_states: also return the token grid after the patch embedding and after every layer.
            output_attentions: also return every layer's attention weights; needs ``attn_implementation="eager"``
                (SDPA does not form the weights).
            return_dict: return an :class:`X2CTCLIPCTModelOutput` (default: ``config.return_dict``) or a tuple.

        Returns:
            :class:`X2CTCLIPCTModelOutput` with ``last_hidden_state`` (B, t, h, w, dim) and ``pooler_output``
            (B, h * w * dim).
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if output_attentions and self.config._attn_implementation != "eager":
            raise ValueError(
                f"output_attentions=True needs eager attention; this CT model uses "
                f"attn_implementation={self.config._attn_implementation!r}. Load it with attn_implementation='eager' "
                "or call model.set_attn_implementation('eager')."
            )
        self._check_input(ct_values)

        tokens = self.embeddings(ct_values.to(self.embeddings.projection.weight.dtype))
        b, t, h, w, dim = tokens.shape
        grid_shape = (b, t, h, w)
        all_hidden_states = [tokens] if output_hidden_states else None
        all_attentions = [] if output_attentions else None

        # Spatial transformer: one sequence of h*w tokens per (volume, slab).
        hidden = tokens.reshape(b * t, h * w, dim)
        hidden = self.spatial_encoder(
            hidden,
            grid_shape,
            attn_bias=self.spatial_position_bias(h, w),
            all_hidden_states=all_hidden_states,
            to_grid=lambda x: x.reshape(b, t, h, w, dim),
            all_attentions=all_attentions,
            to_batch=lambda a: a.reshape(b, t, *a.shape[1:]),
        )

        # Temporal transformer: one sequence of t tokens per (volume, in-plane position).
        hidden = hidden.reshape(b, t, h, w, dim).permute(0, 2, 3, 1, 4).reshape(b * h * w, t, dim)
        hidden = self.temporal_encoder(
            hidden,
            grid_shape,
            all_hidden_states=all_hidden_states,
            to_grid=lambda x: x.reshape(b, h, w, t, dim).permute(0, 3, 1, 2, 4),
            all_attentions=all_attentions,
            to_batch=lambda a: a.reshape(b, h * w, *a.shape[1:]),
        )
        hidden = hidden.reshape(b, h, w, t, dim).permute(0, 3, 1, 2, 4)

        if self.quantizer is not None:
            hidden = self.quantizer(hidden)
        else:
            hidden = hidden.contiguous()
        pooled = hidden.mean(dim=1).reshape(b, h * w * dim)

        hidden_states = tuple(all_hidden_states) if output_hidden_states else None
        attentions = tuple(all_attentions) if output_attentions else None
        if not return_dict:
            return tuple(v for v in (hidden, pooled, hidden_states, attentions) if v is not None)
        return X2CTCLIPCTModelOutput(
            last_hidden_state=hidden, pooler_output=pooled, hidden_states=hidden_states, attentions=attentions
        )


__all__ = ["X2CTCLIPCTModel", "X2CTCLIPCTModelOutput", "X2CTCLIPCTPreTrainedModel"]
