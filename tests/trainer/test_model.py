"""The encoder presets and loading, DDP-safe settings, masking, layer modes, checkpointing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import Wav2Vec2Model

from trainer.config import ModelConfig
from trainer.model import (
    DDP_SAFE,
    ModelLoadError,
    SupConModel,
    build_encoder,
    count_parameters,
    pretrained_revision,
)

SR = 16_000


def _model(seed: int = 0, **kwargs) -> SupConModel:
    torch.manual_seed(seed)
    return SupConModel(ModelConfig(preset="tiny", **kwargs))


def _waves(batch: int = 3, samples: int = SR, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(batch, samples, generator=g)  # (B, T)


def _assert_ddp_safe(encoder: Wav2Vec2Model) -> None:
    for key, value in DDP_SAFE.items():
        assert getattr(encoder.config, key) == value, key
    assert not hasattr(encoder, "masked_spec_embed")


def test_tiny_preset_is_small_and_gives_unit_norm_embeddings() -> None:
    model = _model().eval()
    assert 20_000 <= count_parameters(model.encoder) <= 80_000  # 39,792
    assert count_parameters(model) == count_parameters(model.encoder) + count_parameters(model.head)
    waves = _waves()
    with torch.no_grad():
        z = model(waves)  # (B, D)
        again = model(waves)
    assert z.shape == (3, 256) and z.dtype == torch.float32
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(z, again, rtol=0, atol=0)
    assert not torch.allclose(z[0], z[1], atol=1e-3)


def test_padded_clip_with_mask_matches_the_clip_alone() -> None:
    model = _model().eval()
    long, short = _waves(2, SR)
    short = short[: SR // 2]
    batch = torch.zeros(2, SR)
    batch[0], batch[1, : SR // 2] = long, short
    mask = torch.zeros(2, SR, dtype=torch.long)
    mask[0], mask[1, : SR // 2] = 1, 1
    with torch.no_grad():
        alone = model(short[None])[0]
        masked = model(batch, mask)
        unmasked = model(batch)
        long_alone = model(long[None])[0]
    torch.testing.assert_close(masked[1], alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(masked[0], long_alone, rtol=0, atol=1e-5)
    assert (unmasked[1] - alone).abs().max() > 1e-2


def test_input_is_normalised_per_clip() -> None:
    model = _model().eval()
    wave = _waves(1)
    with torch.no_grad():
        torch.testing.assert_close(model(wave), model(5.0 * wave + 0.2), rtol=0, atol=1e-5)


def test_mean_mode_matches_a_plain_reference() -> None:
    model = _model().eval()
    waves = _waves()
    with torch.no_grad():
        z = model(waves)
        wave = (waves - waves.mean(1, keepdim=True)) / torch.sqrt(waves.var(1, False, True) + 1e-7)
        out = model.encoder(wave, output_hidden_states=True)
        states = [*out.hidden_states[:-1], out.last_hidden_state]
        assert len(states) == model.encoder.config.num_hidden_layers + 1
        features = torch.stack(states).mean(0)  # (B, T', H)
        reference = F.normalize(model.head.proj(features).mean(1), dim=1)
    torch.testing.assert_close(z, reference, rtol=0, atol=1e-5)


def test_layer_modes_differ_and_weighted_layer_weights_learn() -> None:
    waves = _waves()
    outputs = {}
    for layers in ("mean", "last", "weighted"):
        model = _model(layers=layers).eval()
        with torch.no_grad():
            outputs[layers] = model(waves)
    # Uniform initial weights: "weighted" starts equal to "mean".
    torch.testing.assert_close(outputs["weighted"], outputs["mean"], rtol=0, atol=1e-5)
    assert (outputs["mean"] - outputs["last"]).abs().max() > 1e-2

    model = _model(layers="weighted").train()
    assert any(p is model.head.layer_logits for p in model.head_parameters())
    target = F.normalize(torch.randn(3, 256), dim=1)
    (model(waves) * target).sum().backward()
    grad = model.head.layer_logits.grad
    assert grad is not None and grad.abs().max() > 0
    torch.optim.SGD(model.head_parameters(), lr=10.0).step()
    with torch.no_grad():
        assert (model.eval()(waves) - outputs["mean"]).abs().max() > 1e-3


def test_parameter_groups_split_encoder_and_head() -> None:
    model = _model(layers="weighted")
    encoder, head = set(model.encoder_parameters()), set(model.head_parameters())
    assert not encoder & head
    assert encoder | head == set(model.parameters())


def test_presets_force_ddp_safe_settings() -> None:
    _assert_ddp_safe(build_encoder(ModelConfig(preset="tiny")))


def _save_tiny(folder: Path, **overrides) -> Wav2Vec2Model:
    config = build_encoder(ModelConfig(preset="tiny")).config
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(3)
    saved = Wav2Vec2Model(config)
    saved.save_pretrained(folder)
    return saved


def test_local_pretrained_dir_loads_weights_and_forces_ddp_safe_settings(tmp_path: Path) -> None:
    saved = _save_tiny(tmp_path, apply_spec_augment=True, layerdrop=0.1, mask_time_prob=0.05)
    assert hasattr(saved, "masked_spec_embed")
    loaded = build_encoder(ModelConfig(pretrained=str(tmp_path), preset=None))
    _assert_ddp_safe(loaded)
    reference = {k: v for k, v in saved.state_dict().items() if k != "masked_spec_embed"}
    state = loaded.state_dict()
    assert state.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)


def test_pretrained_without_layer_norm_feature_encoder_is_refused(tmp_path: Path) -> None:
    _save_tiny(tmp_path, feat_extract_norm="group")
    with pytest.raises(ModelLoadError, match="feat_extract_norm='group'"):
        build_encoder(ModelConfig(pretrained=str(tmp_path), preset=None))


@pytest.mark.parametrize("layers", ["mean", "last", "weighted"])
def test_training_step_reaches_every_parameter(layers: str) -> None:
    """An unused parameter is what makes DDP fail or hang (LayerDrop, SpecAugment's embedding)."""
    model = _model(layers=layers).train()
    _assert_ddp_safe(model.encoder)  # so masked_spec_embed, used only by SpecAugment, is absent
    mask = torch.ones(3, SR, dtype=torch.long)
    mask[2, SR // 2 :] = 0
    target = F.normalize(torch.randn(3, 256), dim=1)
    (model(_waves(), mask) * target).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_hub_id_offline_and_not_cached_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    hub_id = "supcon-sweep-tests/no-such-model"
    with pytest.raises(ModelLoadError) as info:
        build_encoder(ModelConfig(pretrained=hub_id, preset=None))
    message = str(info.value)
    assert hub_id in message and "offline" in message
    assert f"huggingface-cli download {hub_id}" in message and "local directory" in message


def test_failed_download_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)

    def unreachable(source, **kwargs):
        raise OSError("connection refused\nlong hub traceback text")

    monkeypatch.setattr(Wav2Vec2Model, "from_pretrained", unreachable)
    with pytest.raises(ModelLoadError) as info:
        build_encoder(ModelConfig(pretrained="facebook/wav2vec2-xls-r-300m", preset=None))
    message = str(info.value)
    assert "download failed (OSError: connection refused)" in message
    assert "huggingface-cli download facebook/wav2vec2-xls-r-300m" in message
    assert info.value.__suppress_context__ and info.value.__cause__ is None


@pytest.mark.parametrize("path", ["./no/such/model", "/no/such/model"])
def test_missing_local_path_is_a_clear_error(path: str) -> None:
    with pytest.raises(ModelLoadError, match="is not a directory") as info:
        build_encoder(ModelConfig(pretrained=path, preset=None))
    assert path in str(info.value)


def test_gradient_checkpointing_matches_plain_training_step() -> None:
    plain = _model()
    checkpointed = _model(gradient_checkpointing=True)
    assert checkpointed.encoder.is_activation_checkpointing
    assert not plain.encoder.is_activation_checkpointing
    waves, target = _waves(), F.normalize(torch.randn(3, 256), dim=1)
    for model in (plain, checkpointed):
        torch.manual_seed(5)  # same dropout masks in both forwards
        (model.train()(waves) * target).sum().backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
def test_xlsr_300m_preset_has_the_real_size() -> None:
    """Random weights, ~1.3 GB in fp32; one 0.5 s forward in eval mode (a few seconds on CPU)."""
    torch.manual_seed(0)
    model = SupConModel(ModelConfig(preset="xlsr-300m")).eval()
    assert 300e6 <= count_parameters(model.encoder) <= 320e6  # 315,437,696
    config = model.encoder.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (
        1024,
        24,
        16,
    )
    _assert_ddp_safe(model.encoder)
    with torch.no_grad():
        z = model(_waves(1, SR // 2))
    assert z.shape == (1, 256)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(1))


def test_pretrained_revision_is_the_cached_snapshot(tmp_path: Path) -> None:
    """A hub id resolves to the commit of its snapshot in the cache (what loading used); a
    preset, a local folder and an uncached repo have none."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--facebook--wav2vec2-xls-r-300m"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    hub = ModelConfig(pretrained="facebook/wav2vec2-xls-r-300m", preset=None)
    assert pretrained_revision(hub, cache_dir=tmp_path) == commit
    pinned = hub.model_copy(update={"revision": commit})
    assert pretrained_revision(pinned, cache_dir=tmp_path) == commit
    other = ModelConfig(pretrained="facebook/wav2vec2-base", preset=None)
    assert pretrained_revision(other, cache_dir=tmp_path) is None
    assert pretrained_revision(ModelConfig(), cache_dir=tmp_path) is None
    assert pretrained_revision(ModelConfig(pretrained=str(tmp_path), preset=None)) is None
