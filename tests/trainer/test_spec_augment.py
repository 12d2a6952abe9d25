"""SpecAugment time masking (``model.spec_augment``): on only in training mode and only inside
each clip's valid frames, saved and reloaded with the model, and safe under DDP: with 2 gloo
ranks, a rank whose batch is too short for a masked span or whose forward runs in eval mode
still trains in step with the other; without the zero-weighted tie the same run fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from tests.helpers import free_port, gloo_rank
from trainer import distributed
from trainer.config import ModelConfig, SpecAugmentConfig, load_config
from trainer.evaluate import FinalModel, load_model
from trainer.model import SupConModel, build_encoder

SR = 16_000
PROB = 0.075  # the XLS-R config's value
SPAN = 10
# 0.5 s is 24 frames (at least two spans of 10); 0.15 s is 7 frames, shorter than one span.
SAMPLES, SHORT = SR // 2, 2_400
WORLD_SIZE = 2
# Per rank, per step: (samples per clip, forward in training mode). Rank 1 gets a batch too short
# for a span at step 1 and runs its forward in eval mode (grad on) at step 2.
PLAN = {
    0: [(SAMPLES, True)] * 4,
    1: [(SAMPLES, True), (SHORT, True), (SAMPLES, False), (SAMPLES, True)],
}


def _spec(prob: float = PROB) -> SpecAugmentConfig:
    return SpecAugmentConfig(mask_time_prob=prob, mask_time_length=SPAN)


def _model(prob: float = PROB, seed: int = 0, **kwargs) -> SupConModel:
    torch.manual_seed(seed)
    return SupConModel(ModelConfig(preset="tiny", spec_augment=_spec(prob), **kwargs))


def _batch(samples: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Three clips, the last 3/4 as long and zero-padded: (3, T) waves and their 0/1 mask."""
    g = torch.Generator().manual_seed(seed)
    waves = 0.3 * torch.randn(3, samples, generator=g)  # (3, T)
    mask = torch.ones(3, samples, dtype=torch.long)
    mask[2, samples * 3 // 4 :] = 0
    return waves * mask, mask


def _masked_frames(model: SupConModel, waves: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T') bool: the frames the transformer received as ``masked_spec_embed``."""
    seen = []
    hook = model.encoder.encoder.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].detach().clone())
    )
    try:
        with torch.no_grad():
            model(waves, mask)
    finally:
        hook.remove()
    return (seen[0] == model.encoder.masked_spec_embed).all(-1)


def test_settings_reach_the_encoder() -> None:
    on = build_encoder(ModelConfig(preset="tiny", spec_augment=_spec())).config
    assert on.apply_spec_augment and (on.mask_time_prob, on.mask_time_length) == (PROB, SPAN)
    assert on.mask_feature_prob == 0 and on.layerdrop == 0
    off = build_encoder(ModelConfig(preset="tiny", spec_augment=_spec(0.0)))
    assert not off.config.apply_spec_augment and not hasattr(off, "masked_spec_embed")


def test_masking_only_in_training_mode_and_only_in_valid_frames() -> None:
    model = _model()
    waves, mask = _batch(SAMPLES)
    np.random.seed(0)  # HF draws the spans with numpy's global generator
    masked = _masked_frames(model.train(), waves, mask)  # (3, 24)
    assert masked.shape == (3, 24)
    assert (masked.sum(1) >= SPAN).all()  # at least one span (two with min masks 2) per clip
    valid_frames = model.encoder._get_feat_extract_output_lengths(mask.sum(1))  # (3,)
    assert valid_frames.tolist() == [24, 24, 18] and not masked[2, 18:].any()
    assert not _masked_frames(model.eval(), waves, mask).any()
    # In eval mode (masking off) padding still leaves a clip's embedding unchanged.
    with torch.no_grad():
        alone = model(waves[2:, : SAMPLES * 3 // 4])[0]
        torch.testing.assert_close(model(waves, mask)[2], alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("prob", [PROB, 0.0])
def test_training_output_depends_on_the_spans_only_when_masking_is_on(prob: float) -> None:
    model = _model(prob).train()
    waves, mask = _batch(SAMPLES)
    outputs = []
    for numpy_seed in (0, 1):  # different spans, same dropout
        np.random.seed(numpy_seed)
        torch.manual_seed(5)
        with torch.no_grad():
            outputs.append(model(waves, mask))
    assert torch.equal(outputs[0], outputs[1]) == (prob == 0)


def test_batch_shorter_than_a_span_trains_unmasked() -> None:
    model = _model().train()
    waves, mask = _batch(SHORT)
    # HF alone refuses such a batch (mask_length larger than the 7 frames) ...
    with pytest.raises(ValueError, match="mask_length"):
        model.encoder(waves, attention_mask=mask)
    # ... the model masks nothing and still gives the embedding a (zero) gradient.
    assert not _masked_frames(model, waves, mask).any()
    model(waves, mask).sum().backward()
    assert torch.equal(model.encoder.masked_spec_embed.grad, torch.zeros(32))


def _embed_grad(model: SupConModel, samples: int) -> torch.Tensor | None:
    waves, mask = _batch(samples)
    target = F.normalize(torch.randn(3, 256, generator=torch.Generator().manual_seed(4)), dim=1)
    np.random.seed(0)
    (model(waves, mask) * target).sum().backward()
    return model.encoder.masked_spec_embed.grad


@pytest.mark.parametrize(
    ("training", "samples", "checkpointing"),
    [(True, SAMPLES, False), (True, SAMPLES, True), (True, SHORT, False), (False, SAMPLES, False)],
    ids=["train", "train-checkpointed", "train-short-batch", "eval-with-grad"],
)
def test_every_forward_with_grad_reaches_masked_spec_embed(
    training: bool, samples: int, checkpointing: bool
) -> None:
    """What DDP needs: a gradient (zero where nothing was masked) on every path."""
    model = _model(gradient_checkpointing=checkpointing).train(training)
    grad = _embed_grad(model, samples)
    assert grad is not None
    assert grad.any() == (training and samples == SAMPLES)  # real masking trains it
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_without_the_tie_an_eval_mode_forward_leaves_masked_spec_embed_unused() -> None:
    with mock.patch.object(SupConModel, "_tie_spec_embed", lambda self: 0.0):
        assert _embed_grad(_model().eval(), SAMPLES) is None


def test_model_saved_with_spec_augment_reloads(tmp_path: Path) -> None:
    cfg = load_config(None, [f"model.spec_augment.mask_time_prob={PROB}"])
    torch.manual_seed(0)
    model = SupConModel(cfg.model).eval()
    classifier = torch.nn.Linear(cfg.model.embedding_dim, 1)
    FinalModel(cfg, model, classifier).save(tmp_path / "model")
    loaded = load_model(tmp_path / "model", torch.device("cpu"))
    assert loaded.cfg.model.spec_augment == _spec()
    state = loaded.model.state_dict()
    assert "encoder.masked_spec_embed" in state and state.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("saved_with_embed", [False, True])
def test_pretrained_dir_loads_with_spec_augment(tmp_path: Path, saved_with_embed: bool) -> None:
    torch.manual_seed(3)
    saved = build_encoder(ModelConfig(preset="tiny", spec_augment=_spec(PROB * saved_with_embed)))
    saved.save_pretrained(tmp_path)
    loaded = build_encoder(ModelConfig(pretrained=str(tmp_path), preset=None, spec_augment=_spec()))
    assert loaded.config.apply_spec_augment and loaded.config.mask_time_prob == PROB
    assert loaded.config.layerdrop == 0 and loaded.config.mask_feature_prob == 0
    embed = loaded.masked_spec_embed
    assert torch.isfinite(embed).all() and ((embed >= 0) & (embed <= 1)).all()  # HF's uniform_
    for key, value in saved.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0, msg=key)


def _train(world_rank: int, completed: list[int]) -> dict[str, Any]:
    """SGD steps of the DDP-wrapped tiny model with SpecAugment on, following ``PLAN``; appends
    each finished step to ``completed``."""
    np.random.seed(world_rank)  # different spans per rank, as with per-rank seeds
    model = _model()
    net = distributed.wrap_ddp(model, torch.device("cpu"))
    assert isinstance(net, DistributedDataParallel)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    initial = torch.cat([p.detach().flatten() for p in model.parameters()])
    embed_grads = []
    for step, (samples, training) in enumerate(PLAN[world_rank]):
        waves, mask = _batch(samples, seed=10 * world_rank + step)
        target = F.normalize(torch.randn(3, 256, generator=torch.Generator().manual_seed(step)))
        net.train(training)
        loss = -(net(waves, mask) * target).sum()
        optimizer.zero_grad()
        loss.backward()
        grad = model.encoder.masked_spec_embed.grad  # None: unused in this rank's graph
        embed_grads.append(None if grad is None else grad.clone())
        optimizer.step()
        completed.append(step)
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    return {"initial": initial, "params": params, "embed_grads": embed_grads}


def _worker(world_rank: int, port: int, out_dir: str) -> None:
    """The plan with the fix, then (last: it breaks the process group) without the tie."""
    with gloo_rank(world_rank, WORLD_SIZE, port):
        result: dict[str, Any] = {"fixed": _train(world_rank, [])}
        completed: list[int] = []
        with mock.patch.object(SupConModel, "_tie_spec_embed", lambda self: 0.0):
            try:
                _train(world_rank, completed)
            except RuntimeError as err:
                result["untied_error"] = str(err)
        result["untied_completed"] = completed
        torch.save(result, Path(out_dir) / f"rank{world_rank}.pt")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out_dir = tmp_path_factory.mktemp("spec_augment_dist")
    mp.spawn(_worker, args=(free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD_SIZE)]


@pytest.mark.dist
@pytest.mark.slow
def test_ddp_trains_in_step_when_a_rank_masks_nothing(two_ranks) -> None:
    fixed = [rank["fixed"] for rank in two_ranks]
    assert torch.equal(fixed[0]["params"], fixed[1]["params"])
    assert not torch.equal(fixed[0]["params"], fixed[0]["initial"])
    # Averaged gradients: rank 0 masked every step, so the embedding learned on both ranks.
    embed_grads = [torch.stack(rank["embed_grads"]) for rank in fixed]  # W x (steps, H)
    assert torch.equal(embed_grads[0], embed_grads[1])
    assert embed_grads[0].abs().amax(1).min() > 0


@pytest.mark.dist
def test_ddp_fails_on_the_same_plan_without_the_tie(two_ranks) -> None:
    """The negative control: rank 1's eval-mode forward (step 2) leaves the embedding out of its
    graph, so that step's gradients are never reduced and rank 1's next step raises, while rank 0
    waits in the all-reduce until rank 1 leaves. The short batch (step 1) is fine either way."""
    assert two_ranks[1]["untied_completed"] == [0, 1, 2]
    assert "Expected to have finished reduction" in two_ranks[1]["untied_error"]
    assert two_ranks[0]["untied_completed"] == [0, 1]
    assert "untied_error" in two_ranks[0]
