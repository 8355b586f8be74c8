"""The servers' SGD step is torch.optim.SGD's, bit for bit."""

import torch

from asyncfl.model import Net, loss_fn
from asyncfl.task import sgd_step


def test_sgd_step_matches_torch_optim_sgd():
    # Prepare: two identical models with the same gradients.
    torch.manual_seed(0)
    a, b = Net(), Net()
    b.load_state_dict(a.state_dict())
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for m in (a, b):
        loss_fn(m(x), y).backward()
    # Execute
    torch.optim.SGD(a.parameters(), lr=0.1).step()
    sgd_step(list(b.parameters()), 0.1)
    # Assert
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.fc2.bias, Net().fc2.bias)
