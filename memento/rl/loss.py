"""The policy-gradient objective: advantages, CISPO (the paper's) or GRPO's clipped surrogate, KL to a reference.

All per-token tensors are (B, T) over the completion tokens, `mask` True where a token counts. With r_t the
importance ratio pi(a_t|s_t) / pi_old(a_t|s_t) and A the rollout's advantage:
- CISPO: -sg(clip(r_t, 1 - eps_low, 1 + eps_high)) * A * log pi(a_t|s_t). The clipped weight carries no gradient, so
  every token keeps a gradient (PPO's clip zeroes those outside the trust region);
- GRPO: -min(r_t * A, clip(r_t, 1 - eps_low, 1 + eps_high) * A);
- KL(pi || ref) by the k3 estimator exp(ref - logp) - (ref - logp) - 1, weighted by beta.
Advantages: a rollout's reward minus its prompt's mean, divided by the standard deviation of those differences over
the whole batch (batch-level normalisation). Loss normalisation is group-total: a prompt's token terms are summed
and divided by its group's token count, and groups are averaged, so long and short answers weigh alike within a
group, and every prompt counts the same.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


def advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N,) rewards of N = prompts x group_size rollouts (a prompt's rollouts adjacent) -> (N,) advantages."""
    grouped = rewards.view(-1, group_size)
    centred = (grouped - grouped.mean(dim=1, keepdim=True)).flatten()
    return centred / (centred.std(unbiased=False) + 1e-6)


class Terms(NamedTuple):
    loss: torch.Tensor  # scalar, to minimise
    kl: float  # mean over counted tokens
    clipped: float  # share of counted tokens whose ratio fell outside the clip range


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantage: torch.Tensor,
    mask: torch.Tensor,
    group: torch.Tensor,
    kind: str = "cispo",
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    beta: float = 0.0,
) -> Terms:
    """`advantage` (B,), `group` (B,) the prompt of each rollout; the rest (B, T)."""
    ratio = torch.exp(logp - old_logp)
    a = advantage[:, None]
    low, high = 1 - eps_low, 1 + eps_high
    if kind == "cispo":
        per_token = -ratio.clamp(low, high).detach() * a * logp
    else:
        per_token = -torch.minimum(ratio * a, ratio.clamp(low, high) * a)
    kl = torch.zeros_like(logp)
    if ref_logp is not None:
        delta = ref_logp - logp
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + beta * kl
    m = mask.to(per_token.dtype)
    groups = torch.unique(group)
    total = sum((per_token * m)[group == g].sum() / m[group == g].sum().clamp(min=1) for g in groups)
    count = m.sum().clamp(min=1)
    outside = ((ratio < low) | (ratio > high)) & mask
    return Terms(total / len(groups), float((kl.detach() * m).sum() / count), float(outside.sum() / count))
