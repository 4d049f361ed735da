"""Per-token losses under a stage's mask, and the held-out loss split by token kind.

The kind of a loss term is the kind of the token being *predicted*: "memento" is the loss on memento content,
"answer" on the final answer, "block" on block content, "delimiters" on the six structural tokens (and the
newlines glued to them).
"""

from __future__ import annotations

import torch

from memento.core.spans import Kind
from memento.train.dataset import IGNORE, Collator
from memento.train.masks import model_mask

KIND_GROUPS = {
    "block": (Kind.BLOCK,),
    "memento": (Kind.SUMMARY,),
    "answer": (Kind.ANSWER,),
    "delimiters": (
        Kind.THINK_START,
        Kind.BLOCK_START,
        Kind.BLOCK_END,
        Kind.SUMMARY_START,
        Kind.SUMMARY_END,
        Kind.THINK_END,
    ),
}


def token_losses(model, batch: dict, mask: str, restart: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T-1) cross-entropy per predicted token (0 where ignored) and (B, T-1) kinds of the predicted tokens.

    `mask`: "causal" (the model builds its own causal mask from the 2D padding mask) or "memento" (the batch's
    eviction schedule, in the form the model's attention implementation reads).
    """
    ids = batch["input_ids"].to(device)
    if mask == "causal":
        attention = batch["attention_mask"].to(device)
    else:
        redo = batch["redo"].to(device) if "redo" in batch else None  # the release's restart mode
        attention = model_mask(_unwrap(model), batch["schedule"].to(device), batch["pad"].to(device), restart, redo)
    logits = model(input_ids=ids, attention_mask=attention, position_ids=batch["position_ids"].to(device)).logits
    labels = batch["labels"][:, 1:].to(device)
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="none"
    ).view(labels.shape)
    return losses, batch["kind"][:, 1:].to(device)


def _unwrap(model):
    return getattr(model, "module", model)


@torch.no_grad()
def evaluate(model, examples, policy, batch_size, accelerator, pad_token_id, masks=("causal", "memento")) -> dict:
    """{mask: {"loss/<kind>": mean loss, "tokens/<kind>": count}} on held-out examples, for both masks."""
    was_training = model.training
    model.eval()
    out = {}
    for mask in masks:
        collate = Collator(pad_token_id or 0, None if mask == "causal" else policy)
        sums = {k: 0.0 for k in (*KIND_GROUPS, "all")}
        counts = dict.fromkeys(sums, 0)
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start : start + batch_size])
            with accelerator.autocast():
                losses, kinds = token_losses(model, batch, mask, policy.restart, accelerator.device)
            valid = batch["labels"][:, 1:].to(losses.device) != IGNORE
            for group, members in (*KIND_GROUPS.items(), ("all", None)):
                sel = (
                    valid if members is None else valid & torch.isin(kinds, torch.tensor(members, device=kinds.device))
                )
                sums[group] += float(losses[sel].sum())
                counts[group] += int(sel.sum())
        out[mask] = {f"loss/{k}": sums[k] / counts[k] for k in sums if counts[k]}
        out[mask].update({f"tokens/{k}": counts[k] for k in counts})
    model.train(was_training)
    return out
