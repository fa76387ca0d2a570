"""fastai optimisers whose update runs in torch's fused kernels.

fastai's ``Adam`` and ``SGD`` update each parameter tensor in a Python loop of small ops, and
Adam allocates three temporaries the size of each tensor per step (``sqr_avg / debias2``, its
``sqrt``, ``+ eps``); ``zero_grad`` writes zeros over every gradient. On a CPU with a 30 M
parameter detector that is a measurable share of the step (``bench/train_step_overhead.py``).

:class:`FusedAdam` and :class:`FusedSGD` are fastai :class:`~fastai.optimizer.Optimizer`\\ s, so
parameter groups from the splitter, hyper-parameter schedules (``lr``, ``mom``), ``freeze`` /
``fine_tune``, ``wd_bn_bias`` (per-parameter ``do_wd``) and ``state_dict`` behave as with
fastai's own; only ``step`` differs: each group's parameters go to torch's functional
``torch.optim.adam.adam`` / ``torch.optim.sgd.sgd`` with ``fused=True`` (one kernel over all
tensors, no temporaries) and ``zero_grad`` sets gradients to ``None`` (so a frozen parameter is
never stepped; fastai's zeroed gradients let momentum and weight decay move parameters frozen
after training began). The arithmetic is fastai's:
Adam with ``grad_avg = mom * grad_avg + (1 - mom) * grad``, bias-corrected by the current
``mom`` / ``sqr_mom`` (fastai ``debias``), ``eps`` outside the square root, decoupled weight
decay ``p *= 1 - lr * wd`` (``decouple_wd=True``) or L2 added to the gradient; SGD with
``grad_avg = mom * grad_avg + grad`` (no dampening). ``tests/test_optim.py`` checks both against
fastai's optimisers step by step.
"""

from __future__ import annotations

import torch
from fastai.optimizer import Optimizer

#: Parameter dtypes and devices fpn_lab sends to torch's fused Adam / SGD kernels; anything else
#: (another device type, mixed devices in one group) takes torch's foreach path: same arithmetic.
_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_FUSED_DEVICES = ("cpu", "cuda")


class _FusedOptimizer(Optimizer):
    """Shared part: fastai bookkeeping, one torch call per (group, with / without weight decay)."""

    def __init__(self, params, lr, decouple_wd: bool, **defaults):
        super().__init__(params, [], lr=lr, **defaults)
        self.decouple_wd = decouple_wd

    def zero_grad(self):
        for pg in self.param_lists:
            for p in pg:
                p.grad = None

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise NotImplementedError("fastai optimizers do not support a closure")
        for pg, hyper in zip(self.param_lists, self.hypers):
            with_wd, without_wd = [], []
            for p in pg:
                if p.grad is not None:
                    (with_wd if self.state[p].get("do_wd", True) else without_wd).append(p)
            for ps, wd in ((with_wd, hyper["wd"]), (without_wd, 0.0)):
                if ps:
                    fused = ps[0].device.type in _FUSED_DEVICES and all(
                        p.dtype in _FUSED_DTYPES and p.device == ps[0].device for p in ps)
                    self._update(ps, hyper, float(wd), fused)

    def _update(self, ps, hyper, wd, fused):  # pragma: no cover - abstract
        raise NotImplementedError


class FusedAdam(_FusedOptimizer):
    """fastai's ``Adam`` (same hyper-parameters and defaults) stepping with torch's fused Adam.

    Args:
        params: tensors or fastai parameter groups (lists of tensors).
        lr: learning rate (or a ``slice`` over groups, as fastai).
        mom: beta1 (moving average of gradients), sqr_mom: beta2 (of squared gradients).
        eps: added to the bias-corrected root of the squared average (fastai's default 1e-5).
        wd: weight decay; decoupled (AdamW, ``p *= 1 - lr * wd``) when ``decouple_wd``, else L2.
    """

    def __init__(self, params, lr, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.01, decouple_wd=True):
        super().__init__(params, lr, decouple_wd, mom=mom, sqr_mom=sqr_mom, eps=eps, wd=wd)

    def _update(self, ps, hyper, wd, fused):
        from torch.optim.adam import adam

        states = [self.state[p] for p in ps]
        for p, s in zip(ps, states):
            if "grad_avg" not in s:
                s["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                s["sqr_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                s["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
        adam(ps, [p.grad for p in ps], [s["grad_avg"] for s in states], [s["sqr_avg"] for s in states], [],
             [s["step"] for s in states], fused=fused or None, foreach=None if fused else True,
             decoupled_weight_decay=self.decouple_wd, amsgrad=False, beta1=float(hyper["mom"]),
             beta2=float(hyper["sqr_mom"]), lr=float(hyper["lr"]), weight_decay=wd, eps=float(hyper["eps"]),
             maximize=False)


class FusedSGD(_FusedOptimizer):
    """fastai's ``SGD`` (same hyper-parameters and defaults) stepping with torch's fused SGD.

    Args:
        params: tensors or fastai parameter groups.
        lr: learning rate; mom: momentum (0 = plain SGD); wd: weight decay, decoupled
            (``p *= 1 - lr * wd``, fastai's default) or L2 added to the gradient
            (``decouple_wd=False``, what mmdet's SGD does).
    """

    def __init__(self, params, lr, mom=0.0, wd=0.0, decouple_wd=True):
        super().__init__(params, lr, decouple_wd, mom=mom, wd=wd)
        self.use_momentum = mom != 0  # as fastai: SGD built without momentum ignores a scheduled ``mom``

    def _update(self, ps, hyper, wd, fused):
        from torch.optim.sgd import sgd

        lr, mom = float(hyper["lr"]), (float(hyper["mom"]) if self.use_momentum else 0.0)
        if wd and self.decouple_wd:
            torch._foreach_mul_(ps, 1.0 - lr * wd)
        states = [self.state[p] for p in ps]
        bufs = [s.get("grad_avg") for s in states] if mom else [None] * len(ps)
        if mom and any(b is None for b in bufs) and not all(b is None for b in bufs):
            # a group whose parameters got gradients at different steps (after unfreezing):
            # start the missing buffers at zero, which is what fastai's first step gives
            bufs = [torch.zeros_like(p) if b is None else b for p, b in zip(ps, bufs)]
        sgd(ps, [p.grad for p in ps], bufs, fused=fused or None, foreach=None if fused else True,
            weight_decay=0.0 if self.decouple_wd else wd, momentum=mom, lr=lr, dampening=0.0, nesterov=False,
            maximize=False)
        if mom:
            for s, b in zip(states, bufs):
                s["grad_avg"] = b
