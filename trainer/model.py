"""The encoder (wav2vec2 / XLS-R) and the SupCon embedding model built on it.

Features follow the paper's code (Sudan et al., arXiv:2604.26057): all hidden states of the
encoder, combined over the layer axis, a frame-wise Dropout -> LeakyReLU -> Linear head, an
attention-masked mean over frames, then L2 normalisation.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Wav2Vec2Config, Wav2Vec2Model

from trainer.config import ModelConfig, SpecAugmentConfig

# DDP needs every rank to use the same parameters each step. LayerDrop skips different layers on
# different ranks and feature masking is not part of the method, so both are off on every path;
# these are also the settings with SpecAugment off (``masked_spec_embed`` is then not created).
# Time masking comes from ``model.spec_augment`` (see encoder_settings), and SupConModel.forward
# keeps ``masked_spec_embed`` in every rank's graph when it is on.
DDP_SAFE = {
    "apply_spec_augment": False,
    "mask_time_prob": 0.0,
    "mask_feature_prob": 0.0,
    "layerdrop": 0.0,
}

# Shared by both presets: the XLS-R feature encoder geometry (320x downsampling, 400-sample
# receptive field), pre-LayerNorm transformer, and the dropouts of the published
# facebook/wav2vec2-xls-r-300m config.json (from memory of that file; no download here).
_XLSR_COMMON = {
    "conv_kernel": (10, 3, 3, 3, 3, 2, 2),
    "conv_stride": (5, 2, 2, 2, 2, 2, 2),
    "conv_bias": True,
    "feat_extract_norm": "layer",
    "feat_extract_activation": "gelu",
    "do_stable_layer_norm": True,
    "hidden_act": "gelu",
    "attention_dropout": 0.1,
    "hidden_dropout": 0.1,
    "feat_proj_dropout": 0.1,
    "activation_dropout": 0.0,
    "layer_norm_eps": 1e-5,
}

_PRESETS = {
    # 39,792 parameters: fast enough for tests and CPU smoke runs.
    "tiny": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "conv_dim": (32,) * 7,
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 4,
    },
    # 315,437,696 parameters: the Wav2Vec2Model part of XLS-R 300M without masked_spec_embed.
    "xlsr-300m": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "conv_dim": (512,) * 7,
        "num_conv_pos_embeddings": 128,
        "num_conv_pos_embedding_groups": 16,
    },
}

_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


class ModelLoadError(ValueError):
    """Pretrained weights could not be found; the message says how to provide them."""


def encoder_settings(spec: SpecAugmentConfig) -> dict[str, Any]:
    """The ``Wav2Vec2Config`` overrides of every path: :data:`DDP_SAFE`, with SpecAugment's time
    masking on iff ``spec.mask_time_prob > 0``. ``mask_time_min_masks`` keeps the encoder's own
    value (2 in the presets and the XLS-R config)."""
    return {
        **DDP_SAFE,
        "apply_spec_augment": spec.mask_time_prob > 0,
        "mask_time_prob": spec.mask_time_prob,
        "mask_time_length": spec.mask_time_length,
    }


def build_encoder(cfg: ModelConfig) -> Wav2Vec2Model:
    """A ``Wav2Vec2Model`` from ``cfg.preset`` (random weights) or ``cfg.pretrained``, DDP-safe,
    its attention through ``cfg.attention``."""
    settings = encoder_settings(cfg.spec_augment)
    if cfg.preset is not None:
        config = Wav2Vec2Config(**_XLSR_COMMON, **_PRESETS[cfg.preset], **settings)
        encoder = Wav2Vec2Model(config)
    else:
        encoder = _load_pretrained(cfg.pretrained, {**settings, "revision": cfg.revision})
    _check_masking(encoder.config, cfg.pretrained or cfg.preset)
    encoder.set_attn_implementation(cfg.attention)
    return encoder


def _offline() -> bool:
    return any(os.environ.get(v, "").upper() in {"1", "ON", "YES", "TRUE"} for v in _OFFLINE_VARS)


def _how_to(source: str, reason: str) -> str:
    return (
        f"model.pretrained={source!r}: {reason}.\n"
        "Provide the weights in one of two ways:\n"
        f"  - pre-download them into the Hugging Face cache on a machine with internet:\n"
        f"      huggingface-cli download {source}\n"
        "    (set HF_HOME to the same shared cache on every node), or\n"
        "  - point model.pretrained at a local directory holding config.json and the weights\n"
        "    (e.g. on shared storage; save_pretrained() or a copy of the hub snapshot)."
    )


def _load_pretrained(source: str, settings: dict[str, Any]) -> Wav2Vec2Model:
    path = Path(source).expanduser()
    if path.is_dir():
        return Wav2Vec2Model.from_pretrained(path, **settings)
    if source.startswith(("/", ".", "~")) or path.exists():
        raise ModelLoadError(_how_to(source, f"{path} is not a directory"))
    try:
        return Wav2Vec2Model.from_pretrained(source, local_files_only=True, **settings)
    except (OSError, ValueError):
        pass  # not cached: download below unless offline
    if _offline():
        reason = "not in the Hugging Face cache and the hub is offline (HF_HUB_OFFLINE)"
        raise ModelLoadError(_how_to(source, reason))
    try:
        return Wav2Vec2Model.from_pretrained(source, **settings)
    except Exception as err:  # any hub/network failure gets the same actionable message
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        reason = f"download failed ({type(err).__name__}: {first_line})"
        raise ModelLoadError(_how_to(source, reason)) from None


def pretrained_revision(cfg: ModelConfig, cache_dir: Path | None = None) -> str | None:
    """The hub commit the encoder's weights come from: the snapshot of ``cfg.pretrained`` at
    ``cfg.revision`` in the Hugging Face cache (``cache_dir``, default HF_HUB_CACHE: where
    loading put it). None for a preset, a local directory, or weights not in the cache."""
    if cfg.pretrained is None or Path(cfg.pretrained).expanduser().is_dir():
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(
            cfg.pretrained, "config.json", cache_dir=cache_dir, revision=cfg.revision
        )
    except ValueError:  # not a valid repo id
        return None
    return Path(cached).parent.name if isinstance(cached, str) else None


def _check_masking(config: Wav2Vec2Config, source: str | None) -> None:
    """Padding must not change a clip's embedding: that needs per-frame (layer) CNN norms."""
    if config.feat_extract_norm != "layer" or config.add_adapter:
        raise ModelLoadError(
            f"model {source!r} has feat_extract_norm={config.feat_extract_norm!r}, "
            f"add_adapter={config.add_adapter}: its outputs depend on zero padding; use an XLS-R "
            "style checkpoint (feat_extract_norm='layer', no adapter)"
        )


class _Head(nn.Module):
    """Combines the hidden states (learned weights if ``layers="weighted"``), projects frames."""

    def __init__(self, cfg: ModelConfig, hidden_size: int, num_states: int) -> None:
        super().__init__()
        self.layers = cfg.layers
        if cfg.layers == "weighted":
            # Zeros -> softmax is uniform: training starts from the paper's "mean".
            self.layer_logits = nn.Parameter(torch.zeros(num_states))
        self.proj = nn.Sequential(
            nn.Dropout(cfg.dropout), nn.LeakyReLU(), nn.Linear(hidden_size, cfg.embedding_dim)
        )

    def combine(self, states: list[torch.Tensor]) -> torch.Tensor:
        """(B, T', H) from the hidden states, each (B, T', H), accumulated in fp32."""
        if self.layers == "last":
            return states[-1].float()
        if self.layers == "weighted":
            weights = torch.softmax(self.layer_logits.float(), dim=0)  # (L,)
        else:
            weights = torch.full((len(states),), 1.0 / len(states), device=states[0].device)
        # A running sum rather than torch.stack: no (L, B, T', H) copy.
        out = weights[0] * states[0].float()
        for w, h in zip(weights[1:], states[1:], strict=True):
            out = out + w * h.float()
        return out


class SupConModel(nn.Module):
    """Encoder + head: waveform (B, T) -> L2-normalised embedding z (B, embedding_dim).

    ``encoder`` is the ``Wav2Vec2Model``; ``head`` holds everything else (layer weights and the
    projection), so the optimiser can give them separate learning rates.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = build_encoder(cfg)
        # ``auto`` starts off; trainer.memory decides before training.
        self.set_checkpointing(cfg.gradient_checkpointing is True)
        config = self.encoder.config
        self.head = _Head(cfg, config.hidden_size, config.num_hidden_layers + 1)

    def set_checkpointing(self, on: bool) -> None:
        """Gradient checkpointing of the encoder's layers on or off (before wrapping in DDP)."""
        if on:
            # Non-reentrant: works under DDP and without inputs that require grad.
            self.encoder.activation_checkpointing_enable({"use_reentrant": False})
        elif self.encoder.is_activation_checkpointing:
            self.encoder.activation_checkpointing_disable()

    @property
    def checkpointing(self) -> bool:
        return self.encoder.is_activation_checkpointing

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        return self.encoder.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        return self.head.parameters()

    def forward(
        self, waveform: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """z (B, D), fp32, unit norm, from right-padded waveforms (B, T) and their 0/1 mask (B, T).

        With ``model.normalize_input`` each waveform is normalised to zero mean and unit variance
        over its valid samples, as the XLS-R feature extractor does (``do_normalize=True``), so
        raw [-1, 1] audio can be fed; padding stays zero. The frames are averaged over the
        clip's valid frames (``model.pooling: masked``: with the mask, a clip's z does not depend
        on the padding; a clip shorter than the 400-sample receptive field has no frames and
        gets z = 0) or over every frame of the batch (``all_frames``: padding included).

        With ``model.spec_augment`` on and in training mode, HF's SpecAugment replaces spans of
        frames by ``masked_spec_embed`` before the transformer; it draws the spans from the
        frame-level attention mask, so they lie inside each clip's valid frames.
        """
        wave = waveform.float()  # (B, T)
        valid = torch.ones_like(wave) if attention_mask is None else attention_mask.to(wave)
        if self.cfg.normalize_input:
            wave = _normalise(wave, valid)  # (B, T)
        out = self.encoder(
            wave,
            attention_mask=attention_mask,
            mask_time_indices=self._no_span_fits(wave),
            output_hidden_states=True,
        )
        # transformers 5 records the last layer before the final LayerNorm; use the normalised
        # output as 4.x did (and so that the final LayerNorm takes part, as DDP requires).
        states = [*out.hidden_states[:-1], out.last_hidden_state]  # L x (B, T', H)
        frames = self.head.proj(self.head.combine(states))  # (B, T', D)
        if self.cfg.pooling == "all_frames":
            pooled = frames.mean(1)  # (B, D)
        else:
            pooled = self._masked_mean(frames, valid)  # (B, D)
        pooled = pooled + self._tie_spec_embed()
        return F.normalize(pooled.float(), dim=-1)

    def _masked_mean(self, frames: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, D): the mean of ``frames`` (B, T', D) over each clip's first frames, as many as
        its valid samples (B, T) give; wav2vec2 reads its mask as a length the same way."""
        lengths = self.encoder._get_feat_extract_output_lengths(valid.sum(-1).long())  # (B,)
        steps = torch.arange(frames.shape[1], device=frames.device)
        frame_mask = (steps[None, :] < lengths[:, None]).to(frames.dtype)  # (B, T')
        count = frame_mask.sum(1, keepdim=True).clamp(min=1)  # (B, 1)
        return (frames * frame_mask[..., None]).sum(1) / count

    def _no_span_fits(self, wave: torch.Tensor) -> torch.Tensor | None:
        """An all-False (B, T') time mask when SpecAugment is on, the encoder is training and the
        batch has fewer frames than one masked span; ``None`` (HF draws the mask) otherwise.

        HF's ``_compute_mask_indices`` raises for such a batch (``mask_length`` larger than the
        sequence) instead of masking nothing; the empty mask masks nothing and, as HF still writes
        ``masked_spec_embed`` through it, keeps that parameter in the graph.
        """
        config = self.encoder.config
        if not (self.encoder.training and config.apply_spec_augment and config.mask_time_prob > 0):
            return None
        num_frames = int(self.encoder._get_feat_extract_output_lengths(torch.tensor(wave.shape[1])))
        if num_frames >= config.mask_time_length:
            return None
        return torch.zeros(wave.shape[0], num_frames, dtype=torch.bool, device=wave.device)

    def _tie_spec_embed(self) -> torch.Tensor | float:
        """0 times ``masked_spec_embed`` (when it exists and grad is on), added to the output.

        DDP without ``find_unused_parameters`` waits in backward for a gradient for every
        parameter; a rank whose graph lacks one skips the bucket's all-reduce, its gradients stay
        local and the next step raises ("Expected to have finished reduction in the prior
        iteration") while the other rank waits in the all-reduce. HF writes the embedding into
        the masked frames with ``hidden_states[mask] = embed`` in training mode, which reaches it
        even when no frame is masked (an empty mask: prob rounding, clips shorter than a span),
        but a forward in eval mode, with grad on, skips the masking altogether. This zero-weighted
        term reaches the parameter on every path (a zero gradient where nothing was masked) at the
        cost of one sum, so no masking case can leave it unused; find_unused_parameters would
        instead walk the graph every step. Under no_grad (evaluation) the output is unchanged.
        """
        embed = getattr(self.encoder, "masked_spec_embed", None)
        if embed is None or not torch.is_grad_enabled():
            return 0.0
        return 0.0 * embed.sum()


def padding_mask(mask: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """A batch's 0/1 ``mask`` (B, T) moved to ``device``, or None when no clip is padded.

    Checked on the loader's host copy, so the question costs no device sync. Without a mask the
    encoder skips its padding path, whose boolean-mask assignment waits for the device every
    forward, and SDPA may take the flash kernel, which takes no mask; the output is the same.
    """
    if mask.device.type == "cpu" and bool(mask.all()):
        return None
    return mask.to(device, non_blocking=True)


def _normalise(wave: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over the valid samples of each row (eps as in HF's extractor)."""
    count = valid.sum(-1, keepdim=True).clamp(min=1)  # (B, 1)
    mean = (wave * valid).sum(-1, keepdim=True) / count
    var = (((wave - mean) * valid) ** 2).sum(-1, keepdim=True) / count
    return (wave - mean) / torch.sqrt(var + 1e-7) * valid


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
