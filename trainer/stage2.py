"""Stage 2: freeze encoder + head, embed once, train a linear bona fide classifier with BCE.

Bona fide is the positive class (``pos_weight = #spoof / #bona fide``); the score is the raw logit,
higher = more bona fide. Early stopping on dev EER keeps the best classifier. Every rank trains the
same classifier on the gathered embeddings; rank 0's weights are broadcast at the end.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from trainer import distributed
from trainer.config import Stage2Config
from trainer.metrics import compute_eer


@dataclass
class Stage2Result:
    classifier: nn.Linear
    best_epoch: int
    dev_eer: float
    history: list[dict[str, float]]


def freeze(model: nn.Module) -> None:
    """No parameter of ``model`` can change from here on (stage 2 trains only the classifier)."""
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)


def _dev_eer(classifier: nn.Linear, z: torch.Tensor, target: torch.Tensor) -> float:
    with torch.no_grad():
        scores = classifier(z).squeeze(1).numpy()
    bona = target.numpy() == 1
    return compute_eer(scores[bona], scores[~bona])[0]


def train_classifier(
    train_z: torch.Tensor,
    train_target: torch.Tensor,
    dev_z: torch.Tensor,
    dev_target: torch.Tensor,
    cfg: Stage2Config,
    *,
    seed: int = 0,
) -> Stage2Result:
    """Linear(D -> 1) with BCE; embeddings (N, D) on CPU, targets (N,) with 1 = bona fide."""
    torch.manual_seed(seed)
    classifier = nn.Linear(train_z.shape[1], 1)
    n_bona = int(train_target.sum())
    pos_weight = torch.tensor([(len(train_target) - n_bona) / max(1, n_bona)])
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    best = (float("inf"), -1, copy.deepcopy(classifier.state_dict()))
    history, bad = [], 0
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(train_z), generator=generator)
        total = 0.0
        for batch in order.split(cfg.batch_size):
            logits = classifier(train_z[batch]).squeeze(1)  # (b,)
            loss = loss_fn(logits, train_target[batch].float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        eer = _dev_eer(classifier, dev_z, dev_target)
        history.append({"classifier/train/loss": total / len(train_z), "classifier/dev/eer": eer})
        if eer < best[0]:
            best, bad = (eer, epoch, copy.deepcopy(classifier.state_dict())), 0
        else:
            bad += 1
            if cfg.patience is not None and bad >= cfg.patience:
                break
    classifier.load_state_dict(distributed.broadcast_object(best[2]))
    classifier.requires_grad_(False)
    return Stage2Result(classifier, best_epoch=best[1], dev_eer=best[0], history=history)
