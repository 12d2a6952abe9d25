"""Typed configuration of the data layer (composed into the trainer config)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SAMPLE_RATE = 16_000

CorpusKind = Literal["asvspoof2019", "asvspoof2021-la", "asvspoof2021-df", "itw", "manifest"]
Subset = Literal["eval", "progress", "hidden", "all"]

SPLITS: dict[str, tuple[str, ...]] = {
    "asvspoof2019": ("train", "dev", "eval"),
    "asvspoof2021-la": ("eval",),
    "asvspoof2021-df": ("eval",),
    "itw": ("eval",),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetConfig(_Strict):
    """A corpus by kind, root and split; every path inside the layout is derived from these.

    ``manifest`` corpora read ``ROOT/{split}.csv`` (columns ``path,label[,speaker,attack]``, paths
    relative to ROOT or absolute). ``subset`` applies to ASVspoof 2021 only; the literature reports
    the ``eval`` subset.
    """

    kind: CorpusKind
    root: Path
    split: str = "eval"
    subset: Subset = "eval"
    on_missing: Literal["error", "skip"] = "error"

    @model_validator(mode="after")
    def _check_split(self) -> DatasetConfig:
        allowed = SPLITS.get(self.kind)
        if allowed is not None and self.split not in allowed:
            raise ValueError(
                f"split {self.split!r} is not a split of {self.kind}; expected one of {allowed}"
            )
        if self.kind == "manifest" and (not self.split or "/" in self.split):
            raise ValueError(f"manifest split must be a file stem, got {self.split!r}")
        return self


class CropConfig(_Strict):
    """How a waveform becomes a model input.

    ``head``: first N samples, short clips repeat-padded (the SSL_Anti-spoofing standard, N=64600).
    ``random``: a random N-sample window (training), short clips repeat-padded.
    ``full``: the whole clip (truncated to N when N is set), batched with zero padding and a mask.
    N is ``samples`` or ``seconds`` (at 16 kHz), never both.
    """

    policy: Literal["head", "random", "full"] = "head"
    samples: int | None = Field(default=None, gt=0)
    seconds: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_length(self) -> CropConfig:
        if self.samples is not None and self.seconds is not None:
            raise ValueError("crop: set samples or seconds, not both")
        return self

    @property
    def num_samples(self) -> int | None:
        """N in samples; ``head``/``random`` default to 64600, ``full`` to no limit."""
        if self.samples is not None:
            return self.samples
        if self.seconds is not None:
            return round(self.seconds * SAMPLE_RATE)
        return None if self.policy == "full" else 64_600


class RawBoostConfig(_Strict):
    """RawBoost (Tak et al., ICASSP 2022) with the reference defaults.

    ``algo``: 0 none, 1 LnL, 2 ISD, 3 SSI, 4 LnL->ISD->SSI, 5 LnL->ISD, 6 LnL->SSI, 7 ISD->SSI,
    8 LnL + ISD in parallel, ``paper`` the authors' chain (LnL always, then SSI with probability
    0.5, then ISD with probability 0.5). Applied to each training clip with probability ``p``.
    """

    algo: Annotated[int, Field(ge=0, le=8)] | Literal["paper"] = 0
    p: float = Field(default=1.0, ge=0.0, le=1.0)
    n_bands: int = Field(default=5, ge=1)
    min_f: float = 20.0
    max_f: float = 8000.0
    min_bw: float = 100.0
    max_bw: float = 1000.0
    min_coeff: int = Field(default=10, ge=1)
    max_coeff: int = Field(default=100, ge=1)
    min_g: float = 0.0
    max_g: float = 0.0
    min_bias_lin_nonlin: float = 5.0
    max_bias_lin_nonlin: float = 20.0
    n_f: int = Field(default=5, ge=1)
    p_isd: float = Field(default=10.0, ge=0.0, le=100.0, description="ISD: max % of samples hit")
    g_sd: float = 2.0
    snr_min: float = 10.0
    snr_max: float = 40.0

    @model_validator(mode="after")
    def _ranges(self) -> RawBoostConfig:
        for lo, hi in (("min_f", "max_f"), ("min_bw", "max_bw"), ("min_coeff", "max_coeff")):
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"rawboost.{lo} must not exceed rawboost.{hi}")
        if self.snr_min > self.snr_max:
            raise ValueError("rawboost.snr_min must not exceed rawboost.snr_max")
        return self


class SamplerConfig(_Strict):
    """Class-balanced batches: ``batch_size`` per rank, ``bonafide_fraction`` of them bona fide.

    ``epoch`` says how long an epoch is. ``bonafide_pass`` (the authors'): one pass over the bona
    fide clips, ``n_bonafide // (bona fide per batch x world size)`` batches per rank, each with a
    fresh random draw of spoof clips. ``dataset_pass``: as many clips as the training set,
    ``n_clips // (batch_size x world_size)`` batches per rank (the minority class oversampled).
    Both depend on the world size. ``batches_per_epoch`` (per rank) overrides either.
    """

    batch_size: int = Field(default=16, ge=2)
    bonafide_fraction: float = Field(default=0.5, gt=0.0, lt=1.0)
    epoch: Literal["bonafide_pass", "dataset_pass"] = "dataset_pass"
    batches_per_epoch: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _both_classes(self) -> SamplerConfig:
        n_bona = round(self.batch_size * self.bonafide_fraction)
        if n_bona < 1 or n_bona >= self.batch_size:
            raise ValueError(
                f"sampler: batch_size={self.batch_size} with bonafide_fraction="
                f"{self.bonafide_fraction} leaves a class with no clip in a batch"
            )
        return self

    @property
    def bonafide_per_batch(self) -> int:
        return round(self.batch_size * self.bonafide_fraction)
