"""The authors' front end as options (model.pooling, model.normalize_input,
data.attention_mask), each against this project's default or a plain reference; the unpadded
fast path (no mask) gives the same numbers as an all-ones mask under every option."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from trainer.config import ModelConfig
from trainer.data.config import CropConfig
from trainer.data.dataset import AudioDataset, collate
from trainer.data.records import Utterance
from trainer.model import SupConModel

SR = 16_000


def _model(**kwargs) -> SupConModel:
    torch.manual_seed(0)
    return SupConModel(ModelConfig(preset="tiny", **kwargs)).eval()


def _waves(batch: int = 2, samples: int = SR, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(batch, samples, generator=g)  # (B, T)


def _padded() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of a 1-s clip and a 0.5-s clip zero-padded to 1 s, its mask, and the short clip."""
    long, short = _waves()
    short = short[: SR // 2]
    batch = torch.zeros(2, SR)
    batch[0], batch[1, : SR // 2] = long, short
    mask = torch.zeros(2, SR, dtype=torch.long)
    mask[0], mask[1, : SR // 2] = 1, 1
    return batch, mask, short


@pytest.mark.parametrize("pooling", ["masked", "all_frames"])
@pytest.mark.parametrize("normalize_input", [True, False])
def test_an_unpadded_batch_needs_no_mask(pooling: str, normalize_input: bool) -> None:
    """The fast path (no mask for a batch no clip of which is padded) gives the numbers of an
    all-ones mask, whatever the front end."""
    model = _model(pooling=pooling, normalize_input=normalize_input)
    waves = _waves()
    with torch.no_grad():
        fast = model(waves)
        masked = model(waves, torch.ones_like(waves, dtype=torch.long))
    torch.testing.assert_close(fast, masked, rtol=0, atol=1e-6)


def test_unpadded_clips_pool_the_same_either_way() -> None:
    with torch.no_grad():
        masked = _model(pooling="masked")(_waves())
        every = _model(pooling="all_frames")(_waves())
    torch.testing.assert_close(masked, every, rtol=0, atol=1e-6)


def test_all_frames_pooling_takes_the_padding_in() -> None:
    """The authors' plain mean over the padded batch: a short clip's embedding depends on how
    much padding its batch gave it, which the masked mean's does not."""
    batch, mask, short = _padded()
    masked, every = _model(pooling="masked"), _model(pooling="all_frames")
    with torch.no_grad():
        alone = every(short[None])[0]
        in_batch = every(batch, mask)[1]
        torch.testing.assert_close(
            masked(batch, mask)[1], masked(short[None])[0], atol=1e-5, rtol=0
        )
    assert (in_batch - alone).abs().max() > 1e-2
    # The padded clip's all-frames mean is the mean of its frames, padding frames included.
    frames = {}
    every.head.proj.register_forward_hook(lambda _m, _i, out: frames.update(out=out))
    with torch.no_grad():
        z = every(batch, mask)
    expected = torch.nn.functional.normalize(frames["out"].mean(1), dim=-1)
    torch.testing.assert_close(z, expected, rtol=0, atol=1e-6)


def test_raw_input_is_the_normalised_input_fed_as_is() -> None:
    """normalize_input=false feeds the waveform unchanged: a clip normalised beforehand gives
    what the normalising model gives the raw clip; the raw clip gives something else."""
    wave = 0.05 * _waves(1) + 0.01  # quiet, with an offset
    standard = (wave - wave.mean()) / torch.sqrt(wave.var(unbiased=False) + 1e-7)
    with torch.no_grad():
        normalising = _model(normalize_input=True)(wave)
        raw = _model(normalize_input=False)
        torch.testing.assert_close(raw(standard), normalising, rtol=0, atol=1e-5)
        assert (raw(wave) - normalising).abs().max() > 1e-2


@pytest.fixture()
def clip_with_silence(tmp_path: Path) -> Utterance:
    """0.5 s of noise, 0.1 s of digital silence, 0.4 s of noise, as 16-bit FLAC."""
    rng = np.random.default_rng(0)
    wave = 0.3 * rng.standard_normal(SR).clip(-3, 3) / 3
    wave[SR // 2 : SR // 2 + SR // 10] = 0.0
    wave[wave == 0] = 0.0
    path = tmp_path / "clip.flac"
    sf.write(path, wave, SR, subtype="PCM_16")
    return Utterance(utt_id="clip", path=path, label="spoof")


def _noise(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An additive augmentation (as RawBoost's SSI): no sample stays exactly zero."""
    return wave + 0.01 * rng.standard_normal(wave.shape[0]).astype(np.float32)


def test_attention_mask_sources(clip_with_silence: Utterance) -> None:
    crop = CropConfig(policy="full")
    clean = AudioDataset([clip_with_silence], crop)[0]["waveform"].numpy()
    zeros = clean == 0
    assert zeros.sum() >= SR // 10  # the digital silence, and any 16-bit zero of the noise

    length = AudioDataset([clip_with_silence], crop, augment=_noise)[0]
    assert "valid" not in length  # built from the lengths when batched

    logged = AudioDataset([clip_with_silence], crop, augment=_noise, mask="nonzero")[0]
    assert torch.equal(logged["valid"], torch.from_numpy(~zeros))
    assert (logged["waveform"].numpy()[zeros] == 0).all()  # re-zeroed after the augmentation
    assert (logged["waveform"].numpy()[~zeros] != clean[~zeros]).any()

    later = AudioDataset([clip_with_silence], crop, augment=_noise, mask="nonzero_augmented")[0]
    assert bool(later["valid"].all())  # the noise filled the silence

    short = {
        "waveform": torch.ones(100),
        "label": 0,
        "index": 1,
        "valid": torch.ones(100, dtype=torch.bool),
    }
    batch = collate([logged, short])
    mask = batch["attention_mask"]  # (2, T)
    assert torch.equal(mask[0], logged["valid"].long())
    assert mask[1, :100].all() and not mask[1, 100:].any()  # padding is never valid
    plain = collate([length, {k: v for k, v in short.items() if k != "valid"}])
    assert bool(plain["attention_mask"][0].all())


def test_a_nonzero_mask_shortens_what_the_encoder_attends_to(clip_with_silence: Utterance) -> None:
    """wav2vec2 reads a mask as a length: a clip with digital silence under the authors' mask
    embeds as if it were that many samples shorter, not as the clip."""
    crop = CropConfig(policy="full")
    model = _model()
    items = [AudioDataset([clip_with_silence], crop, mask=m)[0] for m in ("length", "nonzero")]
    with torch.no_grad():
        z = [model(item["waveform"][None], collate([item])["attention_mask"]) for item in items]
    assert (z[0] - z[1]).abs().max() > 1e-3
