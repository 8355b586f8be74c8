"""The servers' SGD step is torch.optim.SGD's, bit for bit."""

import torch

from asyncfl.core.model import Net, loss_fn
from asyncfl.core.task import sgd_step


def test_sgd_step_matches_torch_optim_sgd():
    # Prepare: two identical models with the same gradients.
    torch.manual_seed(0)
    a, b = Net(), Net()
    b.load_state_dict(a.state_dict())
    before = {k: v.clone() for k, v in a.state_dict().items()}
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for m in (a, b):
        loss_fn(m(x), y).backward()
    # Execute
    torch.optim.SGD(a.parameters(), lr=0.1).step()
    sgd_step(list(b.parameters()), 0.1)
    # Assert
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    # ... and the step did change the weights: against the same model before it, not a fresh one.
    assert all(not torch.equal(before[k], v) for k, v in b.state_dict().items())
