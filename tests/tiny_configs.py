"""Tiny tower configurations for fast tests (transformers' "model tester" pattern)."""

from x2ctclip import X2CTCLIPConfig

TINY_CT = dict(
    dim=32, codebook_size=16, image_size=16, patch_size=8, temporal_patch_size=4, num_frames=8,
    spatial_depth=1, temporal_depth=1, heads=2, dim_head=8,
)
TINY_TEXT = dict(
    model_type="bert", vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    intermediate_size=37, max_position_embeddings=64,
)
TINY_SWIN = dict(model_type="swin", image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4)
TINY_RESNET = dict(model_type="resnet", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")


def tiny_config(cxr: dict | None = None, **overrides) -> X2CTCLIPConfig:
    kwargs = dict(
        text_config=dict(TINY_TEXT), cxr_config=dict(cxr or TINY_SWIN), ct_config=dict(TINY_CT), projection_dim=16,
    )
    kwargs.update(overrides)
    return X2CTCLIPConfig(**kwargs)
