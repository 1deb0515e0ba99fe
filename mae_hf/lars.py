"""LARS (You et al., 2017), as the official MAE linear probing uses it (facebookresearch/mae `util/lars.py`).

SGD with momentum whose step for every matrix/kernel is rescaled to `trust_coefficient * ||p|| / ||g||` of the
gradient: a layer moves by a fixed share of its own norm whatever the scale of its gradient, which is what lets
the linear probe train at large batch sizes on frozen features.
"""

import torch


class LARS(torch.optim.Optimizer):
    """LARS without the official code's extra knobs. For each parameter p (any shape) with gradient g:

        if p.ndim > 1:                        # matrices/kernels only; biases and norm weights are 1-D
            g = g + weight_decay * p
            q = trust_coefficient * ||p|| / ||g||   (Frobenius norms over the whole tensor; 1 if either is 0)
            g = q * g
        mu = momentum * mu + g                # mu starts at 0, so the first step has mu = g
        p = p - lr * mu

    1-D parameters get neither weight decay nor the trust ratio (as the official code), whatever their group
    says. `lr`, `weight_decay`, `momentum` and `trust_coefficient` are read per parameter group on every step,
    so groups may carry their own values and LR schedulers (which rescale each group's `lr`) work as usual.
    The momentum buffer is `state[p]["mu"]`, saved and restored by `state_dict()` / `load_state_dict()`.
    """

    def __init__(
        self,
        params,
        lr: float = 0.0,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        trust_coefficient: float = 0.001,
    ):
        for name, value in (
            ("lr", lr),
            ("weight_decay", weight_decay),
            ("momentum", momentum),
            ("trust_coefficient", trust_coefficient),
        ):
            if value < 0.0:
                raise ValueError(f"LARS: {name} must be >= 0, got {value}")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient)
        super().__init__(params, defaults)

    @staticmethod
    def _adapted_gradient(p: torch.Tensor, grad: torch.Tensor, group: dict) -> torch.Tensor:
        """The decayed, trust-scaled gradient of a matrix/kernel p (same shape as p)."""
        grad = grad.add(p, alpha=group["weight_decay"])
        param_norm = torch.linalg.vector_norm(p)
        update_norm = torch.linalg.vector_norm(grad)
        # torch.where keeps it on the device (no .item() sync per parameter); a zero norm means "no scale
        # known" (a freshly zero-initialised head, or a zero gradient), so the step is left unscaled.
        one = torch.ones_like(param_norm)
        q = torch.where(
            (param_norm > 0) & (update_norm > 0),
            group["trust_coefficient"] * param_norm / torch.where(update_norm > 0, update_norm, one),
            one,
        )
        return grad.mul_(q)

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns `closure()`'s loss if a closure is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")
                grad = self._adapted_gradient(p, p.grad, group) if p.ndim > 1 else p.grad
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(grad)
                p.add_(mu, alpha=-group["lr"])
        return loss
