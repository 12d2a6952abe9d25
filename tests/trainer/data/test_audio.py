"""Decoding, mono mix-down, resampling, crop policies and collation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from trainer.data.audio import ClipReader, load_audio, repeat_pad
from trainer.data.config import CropConfig
from trainer.data.dataset import collate
from trainer.data.errors import AudioDecodeError


@pytest.fixture
def clip16k(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A 1 s, 16 kHz FLAC with distinct sample values (a ramp plus a tone)."""
    t = np.arange(16000)
    wave = (0.5 * np.sin(2 * np.pi * 220 * t / 16000) + t / 40000).astype(np.float32) * 0.5
    path = tmp_path / "c.flac"
    sf.write(path, wave, 16000, format="FLAC", subtype="PCM_24")
    return path, sf.read(path, dtype="float32")[0]


def test_head_crop_is_the_first_samples(clip16k) -> None:
    path, full = clip16k
    out = ClipReader(CropConfig(policy="head", samples=4000))(path)
    np.testing.assert_array_equal(out, full[:4000])


def test_head_crop_repeat_pads_short_clips(clip16k) -> None:
    path, full = clip16k
    out = ClipReader(CropConfig(policy="head", seconds=2.5))(path)
    assert out.shape == (40000,)
    np.testing.assert_array_equal(out, np.concatenate([full, full, full[:8000]]))


def test_default_head_length_is_64600() -> None:
    assert CropConfig().num_samples == 64600
    assert CropConfig(policy="full").num_samples is None
    with pytest.raises(ValueError, match="not both"):
        CropConfig(samples=10, seconds=1.0)


def test_random_crop_is_a_window_of_the_clip(clip16k) -> None:
    path, full = clip16k
    reader = ClipReader(CropConfig(policy="random", samples=3000))
    starts = set()
    for seed in range(6):
        out = reader(path, np.random.default_rng(seed))
        start = int(np.argmin(np.abs(full[: 16000 - 3000 + 1] - out[0])))
        np.testing.assert_array_equal(out, full[start : start + 3000])
        starts.add(start)
    assert len(starts) > 1
    np.testing.assert_array_equal(
        reader(path, np.random.default_rng(3)), reader(path, np.random.default_rng(3))
    )


def test_stereo_441k_is_mixed_down_and_resampled(tmp_path: Path) -> None:
    t = np.arange(44100) / 44100
    left, right = np.sin(2 * np.pi * 300 * t), 0.5 * np.sin(2 * np.pi * 500 * t)
    path = tmp_path / "s.wav"
    sf.write(path, np.stack([left, right], axis=1).astype(np.float32), 44100, subtype="FLOAT")
    mono = ((left + right) / 2).astype(np.float32)
    expected = AF.resample(torch.from_numpy(mono), 44100, 16000).numpy()
    full = load_audio(path)
    assert full.shape == (16000,)
    np.testing.assert_allclose(full, expected, atol=1e-5)
    head = load_audio(path, max_samples=8000)  # decodes only what the crop needs
    np.testing.assert_allclose(head[:7800], expected[:7800], atol=1e-4)


def test_full_policy_batches_with_padding_and_mask(tmp_path: Path) -> None:
    paths = []
    for n in (1600, 4000):
        paths.append(tmp_path / f"{n}.flac")
        sf.write(paths[-1], np.full(n, 0.25, np.float32), 16000, format="FLAC")
    reader = ClipReader(CropConfig(policy="full", samples=3200))
    items = [
        {"waveform": torch.from_numpy(reader(p)), "label": i, "index": i}
        for i, p in enumerate(paths)
    ]
    batch = collate(items)
    assert batch["waveform"].shape == (2, 3200)
    assert batch["attention_mask"].sum(dim=1).tolist() == [1600, 3200]
    assert batch["waveform"][0, 1600:].abs().sum() == 0
    assert batch["label"].tolist() == [0, 1]


def test_repeat_pad_exact() -> None:
    np.testing.assert_array_equal(repeat_pad(np.arange(3.0), 7), [0, 1, 2, 0, 1, 2, 0])


@pytest.mark.parametrize("content", [b"", b"not audio at all" * 100, b"fLaC" + bytes(200)])
def test_corrupt_audio_names_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "LA_T_0000001.flac"
    path.write_bytes(content)
    with pytest.raises(AudioDecodeError, match=r"cannot decode audio file .*LA_T_0000001.flac"):
        load_audio(path)
