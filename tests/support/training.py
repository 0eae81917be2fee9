"""The distributed training loop the tests run (and docs/distributed.md shows), and its single-process twin.

Every rank takes its share (``rank::world``) of the same global batches; DistributedDataParallel averages
the ranks' gradients, which for equal shares is the gradient of the whole batch's mean loss: the weights
after training equal (within float tolerance) those of one process that trains on the whole batches.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TRAIN_CELL", "data", "train_alone"]

TRAIN_CELL = """\
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

dist.init_process_group("gloo")  # env://: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE are set
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)  # the same initial weights on every rank (DDP broadcasts rank 0's anyway)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
ddp = DistributedDataParallel(model)
opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
for step in range(steps):
    xb, yb = X[step * batch : (step + 1) * batch], Y[step * batch : (step + 1) * batch]  # a global batch
    mine = slice(rank, None, world)  # this rank's share of it
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(ddp(xb[mine]), yb[mine])
    loss.backward()  # DDP averages the gradients of all ranks
    opt.step()
    if step % 10 == 0:
        print(f"step {step} loss {loss.item():.4f}")
weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
dist.destroy_process_group()
"""


def data(steps: int = 30, batch: int = 16) -> dict[str, Any]:
    """The notebook's variables the cell reads: a regression problem, ``steps`` global batches."""
    import torch

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(steps * batch, 8, generator=gen)
    y = (x @ torch.randn(8, 1, generator=gen)).tanh() + 0.1 * torch.randn(steps * batch, 1, generator=gen)
    return {"X": x, "Y": y, "steps": steps, "batch": batch}


def train_alone(ns: dict[str, Any]) -> dict[str, Any]:
    """The same training in this process, on the whole global batches, without DDP."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y, steps, batch = ns["X"], ns["Y"], ns["steps"], ns["batch"]
    for step in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(
            model(x[step * batch : (step + 1) * batch]), y[step * batch : (step + 1) * batch]
        ).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(got: dict[str, Any], want: dict[str, Any]) -> None:
    import torch

    assert sorted(got) == sorted(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6)
