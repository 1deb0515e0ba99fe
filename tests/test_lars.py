"""LARS: the official MAE linear-probing update, checked against numbers worked out by hand."""

import copy
import math

import pytest
import torch
from torch import nn

from mae_hf.lars import LARS


def set_grads(grads: dict) -> None:
    for p, g in grads.items():
        p.grad = torch.tensor(g, dtype=p.dtype)


def hand_example():
    """W (2-D) with lr 1 and b (1-D) with lr 0.1, both in groups that ask for weight decay 0.5; float64 so the
    hand-worked values hold to 1e-12. The optimizer-wide lr is 0: only the groups' own lr may move anything."""
    w = nn.Parameter(torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=torch.float64))  # ||W0|| = 5
    b = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = LARS(
        [{"params": [w], "lr": 1.0}, {"params": [b], "lr": 0.1}], weight_decay=0.5, momentum=0.9, trust_coefficient=0.04
    )
    # G + 0.5 * W0 = [[2, 0], [0, 0]]: ||.|| = 2 and only row 0 moves, so a per-row norm would give other numbers.
    grads = {w: [[1.5, -1.0], [-1.0, -2.0]], b: [0.5, 0.25]}
    return w, b, opt, grads


def test_two_steps_match_the_hand_computed_update():
    w, b, opt, grads = hand_example()
    set_grads(grads)
    opt.step()
    # W: q = 0.04 * 5 / 2 = 0.1, mu1 = 0.1 * [[2, 0], [0, 0]], W1 = W0 - mu1.
    # b: no decay, no trust ratio: mu1 = g, b1 = b0 - 0.1 * g.
    torch.testing.assert_close(
        w.detach(), torch.tensor([[0.8, 2.0], [2.0, 4.0]], dtype=torch.float64), atol=1e-12, rtol=0
    )
    torch.testing.assert_close(b.detach(), torch.tensor([0.95, -2.025], dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(
        opt.state[w]["mu"], torch.tensor([[0.2, 0.0], [0.0, 0.0]], dtype=torch.float64), atol=1e-12, rtol=0
    )

    set_grads(grads)
    opt.step()
    # W: G + 0.5 * W1 = [[1.9, 0], [0, 0]], ||W1|| = sqrt(24.64), q = 0.04 * sqrt(24.64) / 1.9,
    #    mu2 = 0.9 * mu1 + q * [[1.9, 0], [0, 0]] = [[0.18 + 0.04 * sqrt(24.64), 0], [0, 0]].
    # b: mu2 = 0.9 * g + g = [0.95, 0.475], b2 = b1 - 0.1 * mu2.
    w_00 = 0.8 - (0.18 + 0.04 * math.sqrt(24.64))
    torch.testing.assert_close(
        w.detach(), torch.tensor([[w_00, 2.0], [2.0, 4.0]], dtype=torch.float64), atol=1e-7, rtol=0
    )
    torch.testing.assert_close(b.detach(), torch.tensor([0.855, -2.0725], dtype=torch.float64), atol=1e-7, rtol=0)


def test_without_momentum_each_step_is_the_plain_scaled_gradient():
    w = nn.Parameter(torch.tensor([[3.0, 0.0], [0.0, 4.0]], dtype=torch.float64))  # ||W|| = 5
    opt = LARS([w], lr=2.0, momentum=0.0, trust_coefficient=0.01)
    for _ in range(2):
        before = w.detach().clone()
        set_grads({w: [[0.0, 6.0], [8.0, 0.0]]})  # ||G|| = 10
        opt.step()
        q = 0.01 * torch.linalg.vector_norm(before) / 10.0
        torch.testing.assert_close(
            w.detach(), before - 2.0 * q * torch.tensor([[0.0, 6.0], [8.0, 0.0]], dtype=torch.float64)
        )


def test_weight_decay_reaches_only_matrices():
    # Zero gradients: any movement comes from weight decay. The trust ratio of W is then tc * ||W|| / (wd * ||W||).
    w = nn.Parameter(torch.full((2, 2), 2.0, dtype=torch.float64))
    b = nn.Parameter(torch.full((3,), 2.0, dtype=torch.float64))
    opt = LARS([w, b], lr=1.0, weight_decay=0.1, momentum=0.9, trust_coefficient=0.05)
    set_grads({w: [[0.0, 0.0], [0.0, 0.0]], b: [0.0, 0.0, 0.0]})
    opt.step()
    # dp = 0.1 * W, q = 0.05 / 0.1 = 0.5: W1 = W0 - 0.05 * W0 = 1.9.
    torch.testing.assert_close(w.detach(), torch.full((2, 2), 1.9, dtype=torch.float64), atol=1e-12, rtol=0)
    assert torch.equal(b.detach(), torch.full((3,), 2.0, dtype=torch.float64))


def test_zero_norms_leave_the_step_unscaled():
    zero_w = nn.Parameter(torch.zeros(2, 3, dtype=torch.float64))  # ||p|| = 0: q = 1
    still_w = nn.Parameter(torch.ones(2, 3, dtype=torch.float64))  # ||g|| = 0 (no decay): q = 1, no 0/0
    no_grad = nn.Parameter(torch.ones(2, 2, dtype=torch.float64))
    opt = LARS([zero_w, still_w, no_grad], lr=0.5, momentum=0.9)
    grad = [[1.0, -2.0, 3.0], [0.0, 4.0, -5.0]]
    set_grads({zero_w: grad, still_w: [[0.0] * 3] * 2})
    opt.step()
    torch.testing.assert_close(zero_w.detach(), -0.5 * torch.tensor(grad, dtype=torch.float64))
    assert torch.equal(still_w.detach(), torch.ones(2, 3, dtype=torch.float64))
    assert torch.isfinite(opt.state[still_w]["mu"]).all()
    assert torch.equal(no_grad.detach(), torch.ones(2, 2, dtype=torch.float64)) and no_grad not in opt.state


def test_step_needs_no_grad_mode_and_returns_the_closure_loss():
    w = nn.Parameter(torch.ones(2, 2))
    opt = LARS([w], lr=0.1, trust_coefficient=0.1)

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 4.0
    assert not w.detach().equal(torch.ones(2, 2))


def test_groups_follow_an_lr_scheduler():
    w = nn.Parameter(torch.ones(2, 2))
    opt = LARS([{"params": [w], "lr": 1.0}], trust_coefficient=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: float(step > 0))  # lr 0, then 1
    set_grads({w: [[1.0, 1.0], [1.0, 1.0]]})
    opt.step()
    assert torch.equal(w.detach(), torch.ones(2, 2))
    scheduler.step()
    opt.step()
    assert not torch.equal(w.detach(), torch.ones(2, 2))


def test_resuming_from_a_state_dict_continues_identically():
    torch.manual_seed(0)
    x, y = torch.randn(16, 4), torch.randn(16, 2)

    def train(model, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()

    def make(model):
        return LARS(model.parameters(), lr=0.5, weight_decay=0.01, trust_coefficient=0.02)

    model = nn.Linear(4, 2)
    opt = make(model)
    train(model, opt, 3)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    train(model, opt, 3)

    resumed = nn.Linear(4, 2)
    resumed.load_state_dict(saved_model)
    resumed_opt = make(resumed)
    resumed_opt.load_state_dict(saved_opt)
    train(resumed, resumed_opt, 3)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)

    # The momentum buffers matter: a fresh optimizer from the same weights ends elsewhere.
    fresh = nn.Linear(4, 2)
    fresh.load_state_dict(saved_model)
    train(fresh, make(fresh), 3)
    assert not torch.equal(fresh.weight, model.weight)


def test_fits_a_linear_regression():
    # Small on purpose: bigger tensors make torch use its thread pool, which crawls on a busy 2-core machine.
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = x @ torch.randn(4, 1) + 0.5
    model = nn.Linear(4, 1)
    opt = LARS(model.parameters(), lr=1.0, trust_coefficient=0.02)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / 100)))
    losses = []
    for _ in range(100):
        loss = nn.functional.mse_loss(model(x), y)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
        scheduler.step()
    assert losses[-1] < 1e-4 * losses[0]


def test_rejects_negative_hyperparameters():
    with pytest.raises(ValueError, match="momentum"):
        LARS([nn.Parameter(torch.ones(2))], momentum=-0.1)
