"""Memory and time of the CT tower's shortcuts against the direct computations CT-CLIP does, at the official size.

Each measurement runs in a fresh child process (so that peak resident memory is that computation's own): the peak
RSS increase over the process's state just before the computation, and the wall time. Compared pairs, on the same
inputs, with their max |difference|:

1. spatial position bias for a 24 x 24 token grid: MLP once per distinct offset (2,209) and gathered, vs. the MLP on
   every (query, key) pair (331,776 x 512 hidden activations), as CT-CLIP computes it;
2. one spatial attention layer over a 240-slice volume (24 slabs x 576 tokens, 8 heads x 32): SDPA with the bias as
   ``attn_mask`` vs. explicit logits + softmax;
3. the vector quantiser on 13,824 tokens against 8,192 codes: chunks of 4,096 tokens vs. one similarity matrix.

Then the whole official-size tower (random weights) on one 1 x 1 x 240 x 480 x 480 volume, in eval mode.

Times are single runs: on a busy machine repeat the script before trusting a time ratio (the memory numbers are
stable).

Run: ``python benchmarks/bench_ct_model.py [--threads N] [--skip-full]``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import torch
import torch.nn.functional as F


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _model(spatial_depth: int = 4, temporal_depth: int = 4):
    from x2ctclip import X2CTCLIPCTConfig
    from x2ctclip.modeling_ct import X2CTCLIPCTModel

    torch.manual_seed(0)
    config = X2CTCLIPCTConfig(spatial_depth=spatial_depth, temporal_depth=temporal_depth)  # official sizes
    return X2CTCLIPCTModel(config).eval()


def _bias_every_pair(module, h: int, w: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    grid = torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=-1).float()
    rel = grid[:, None, :] - grid[None, :, :]
    hidden = torch.sign(rel) * torch.log(rel.abs() + 1)
    for layer in module.mlp[:-1]:
        hidden = F.leaky_relu(layer(hidden), 0.1)
    return module.mlp[-1](hidden).permute(2, 0, 1)


def _attention_explicit(attn, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    n, length, _ = x.shape
    split = lambda y: y.reshape(n, length, attn.heads, attn.head_dim).transpose(1, 2)  # noqa: E731
    q = F.normalize(split(attn.q_proj(attn.norm(x))), dim=-1) * attn.q_scale
    k = F.normalize(split(attn.k_proj(x)), dim=-1) * attn.k_scale
    logits = torch.einsum("bhid,bhjd->bhij", q, k) * attn.logit_scale + bias
    out = torch.einsum("bhij,bhjd->bhid", logits.softmax(-1), split(attn.v_proj(x)))
    return attn.out_proj(out.transpose(1, 2).reshape(n, length, -1))


def _vq_one_shot(quantizer, tokens: torch.Tensor) -> torch.Tensor:
    flat = F.normalize(tokens.reshape(-1, tokens.shape[-1]), dim=-1)
    index = (flat @ F.normalize(quantizer.codebook, dim=-1).t()).argmax(-1)
    return quantizer.codebook[index].reshape(tokens.shape)


def _case(name: str, variant: str, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    with torch.no_grad():
        if name == "full":
            model = _model()
            x = torch.rand(1, 1, 240, 480, 480) * 2 - 1
            model(x[:, :, :20])  # warm-up on a 2-slab volume
            fn = lambda: model(x).pooler_output  # noqa: E731
        else:
            model = _model(1, 0)
            if name == "bias":
                module = model.spatial_position_bias
                fn = (lambda: module(24, 24)) if variant == "new" else (lambda: _bias_every_pair(module, 24, 24))
            elif name == "attention":
                attn = model.spatial_encoder.layers[0].attention
                x = torch.randn(24, 576, 512)
                bias = model.spatial_position_bias(24, 24)
                fn = (lambda: attn(x, bias)) if variant == "new" else (lambda: _attention_explicit(attn, x, bias))
            elif name == "vq":
                quantizer = model.quantizer
                tokens = torch.randn(1, 24, 24, 24, 512)
                fn = (lambda: quantizer(tokens)) if variant == "new" else (lambda: _vq_one_shot(quantizer, tokens))
        before = _rss_mib()
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
        queue.put((seconds, _rss_mib() - before, out.numpy()))  # numpy pickles by value


def run(name: str, variant: str, threads: int):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_case, args=(name, variant, threads, queue))
    proc.start()
    seconds, mib, out = queue.get()
    proc.join()
    return seconds, mib, torch.from_numpy(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip-full", action="store_true", help="skip the whole-tower run")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {args.threads} threads, float32, CPU")
    for name, label in (
        ("bias", "position bias 24x24"),
        ("attention", "spatial attention, 24 x 576 tokens"),
        ("vq", "vector quantiser, 13,824 tokens x 8,192 codes"),
    ):
        t_old, m_old, out_old = run(name, "old", args.threads)
        t_new, m_new, out_new = run(name, "new", args.threads)
        diff = (out_new - out_old).abs().max().item()
        print(
            f"{label}: direct {t_old:.2f} s / +{m_old:.0f} MiB peak RSS, this model {t_new:.2f} s / +{m_new:.0f} MiB; "
            f"time ratio {t_old / t_new:.1f}x, max |diff| {diff:.1e}"
        )
    if not args.skip_full:
        seconds, mib, pooled = run("full", "new", args.threads)
        print(f"whole official-size CT tower, 1 x 1 x 240 x 480 x 480: {seconds:.1f} s, +{mib:.0f} MiB peak RSS, "
              f"pooled {tuple(pooled.shape)}")


if __name__ == "__main__":
    main()
