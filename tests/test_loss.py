import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from x2ctclip import X2CTCLIPLoss, contrastive_loss

SCRIPTS = Path(__file__).parent / "scripts"


def _embeds(n=5, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(torch.randn(n, d, generator=g), dim=-1)


def test_contrastive_loss_is_symmetric_and_matches_reference():
    a, b = _embeds()
    scale = torch.tensor(4.0)
    assert torch.allclose(contrastive_loss(a, b, scale), contrastive_loss(b, a, scale))
    logits = scale * a @ b.t()
    expected = 0.5 * (-logits.log_softmax(1).diag().mean() - logits.t().log_softmax(1).diag().mean())
    assert torch.allclose(contrastive_loss(a, b, scale), expected, atol=1e-6)


def test_contrastive_loss_rewards_alignment():
    a, b = _embeds()
    aligned = contrastive_loss(a, a, torch.tensor(50.0))
    random = contrastive_loss(a, b, torch.tensor(50.0))
    assert aligned < 1e-3 < random


def test_contrastive_loss_stable_with_large_scale():
    a, b = _embeds()
    assert torch.isfinite(contrastive_loss(a, b, torch.tensor(1e4)))


def test_contrastive_loss_rejects_mismatched_shapes():
    a, b = _embeds()
    with pytest.raises(ValueError, match="equal shape"):
        contrastive_loss(a, b[:3], 1.0)


def test_weighted_sum_skips_zero_weights_and_missing_modalities():
    cxr, ct = _embeds(seed=1)
    text, _ = _embeds(seed=2)
    scale = torch.tensor(2.0)
    loss_fn = X2CTCLIPLoss({"ct_text": 0.0, "cxr_text": 1.0, "cxr_ct": 2.0})
    total, terms = loss_fn(scale, cxr=cxr, ct=ct, text=text)
    assert set(terms) == {"cxr_text", "cxr_ct"}
    assert torch.allclose(total, contrastive_loss(cxr, text, scale) + 2.0 * contrastive_loss(cxr, ct, scale))
    total, terms = loss_fn(scale, cxr=cxr, text=text)
    assert set(terms) == {"cxr_text"}
    assert loss_fn(scale, ct=ct)[0] is None
    with pytest.raises(ValueError, match="Unknown loss pair"):
        X2CTCLIPLoss({"cxr_mri": 1.0})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process_at_double_batch(tmp_path):
    """Two gloo processes at batch B: same loss and (DDP-averaged) gradients as one process at 2B, to 1e-5."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        import dist_loss_worker as worker
    finally:
        sys.path.pop(0)
    inputs, towers = worker.make_problem()
    loss_1, grads_1 = worker.loss_and_grads(inputs, towers, slice(None))

    out = tmp_path / "dist.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(SCRIPTS / "dist_loss_worker.py"), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = torch.load(out)
    assert result["world"] == 2
    assert torch.allclose(result["loss"], loss_1, atol=1e-5)
    for name, g in grads_1.items():
        assert torch.allclose(result["grads"][name], g, atol=1e-5), name
    # Without the gradient-keeping gather the result would differ: check the test can fail.
    assert any(g.abs().max() > 1e-4 for g in grads_1.values())


def test_the_model_loss_follows_its_config_after_construction():
    """The trainer of stage 1 changes the loss weights of a loaded model in its config only (issue 13: nothing outside
    the model replaces ``loss_fn``); the loss reads them at each call."""
    cxr, ct = _embeds(seed=3)
    text, _ = _embeds(seed=4)
    scale = torch.tensor(2.0)
    loss_fn = X2CTCLIPLoss({"ct_text": 0.0, "cxr_text": 1.0, "cxr_ct": 0.0})
    total, terms = loss_fn(scale, cxr=cxr, ct=ct, text=text, weights={"ct_text": 1.0, "cxr_text": 0.0, "cxr_ct": 0.0})
    assert set(terms) == {"ct_text"} and torch.allclose(total, contrastive_loss(ct, text, scale))
    assert set(loss_fn(scale, cxr=cxr, ct=ct, text=text)[1]) == {"cxr_text"}  # construction weights otherwise
