"""Run under torchrun (gloo): each process takes its half of a global batch, computes the X2CT-CLIP loss with
negatives gathered across processes, back-propagates, averages gradients as DDP does, and rank 0 saves the
result to the path given as argv[1]."""

import sys

import torch
import torch.distributed as dist

from x2ctclip import X2CTCLIPLoss


def make_problem(global_batch: int = 8, dim_in: int = 12, dim: int = 6):
    g = torch.Generator().manual_seed(0)
    x_cxr = torch.randn(global_batch, dim_in, generator=g)
    x_ct = torch.randn(global_batch, dim_in, generator=g)
    x_text = torch.randn(global_batch, dim_in, generator=g)
    towers = {name: torch.nn.Linear(dim_in, dim) for name in ("cxr", "ct", "text")}
    for i, layer in enumerate(towers.values()):
        torch.manual_seed(10 + i)
        layer.reset_parameters()
    return (x_cxr, x_ct, x_text), towers


def loss_and_grads(inputs, towers, rows):
    embeds = {
        name: torch.nn.functional.normalize(towers[name](x[rows]), dim=-1)
        for name, x in zip(("cxr", "ct", "text"), inputs)
    }
    loss_fn = X2CTCLIPLoss({"ct_text": 0.5, "cxr_text": 1.0, "cxr_ct": 1.0})
    loss, _ = loss_fn(torch.tensor(3.0), **embeds)
    loss.backward()
    grads = {f"{n}.{p}": t.grad.clone() for n, m in towers.items() for p, t in m.named_parameters()}
    return loss.detach(), grads


def main():
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    inputs, towers = make_problem()
    per_rank = inputs[0].shape[0] // world
    loss, grads = loss_and_grads(inputs, towers, slice(rank * per_rank, (rank + 1) * per_rank))
    # What DDP does: average the loss for logging and the gradients for the update.
    dist.all_reduce(loss)
    loss /= world
    for g in grads.values():
        dist.all_reduce(g)
        g /= world
    if rank == 0:
        torch.save({"loss": loss, "grads": grads, "world": world}, sys.argv[1])
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
