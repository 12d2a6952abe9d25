"""The trainer's one typed configuration: YAML files plus dotted ``key=value`` overrides.

Unknown keys, wrong types and impossible combinations fail at load time, naming the key.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainer.data.config import CropConfig, DatasetConfig, RawBoostConfig, SamplerConfig

CONFIG_DIR = Path(__file__).parent / "configs"

# The loss variants, named once: the config validates against them, and the loss
# (:mod:`trainer.loss`) and the loss step (:class:`trainer.contrastive.LossSpec`) dispatch on them.
Similarity = Literal["cosine", "angular"]
Contrast = Literal["local", "global"]
SameLabel = Literal["exclude", "negative", "positive"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SpecAugmentConfig(_Strict):
    """wav2vec2's SpecAugment time masking while fine-tuning (Park et al. 2019, as in the HF
    ``Wav2Vec2Model``): spans of ``mask_time_length`` frames starting at a ``mask_time_prob``
    fraction of frames are replaced by the learned ``masked_spec_embed``. ``mask_time_prob: 0``
    turns it off. The XLS-R 300M config ships 0.075 and 10, which the authors left on."""

    mask_time_prob: float = Field(default=0.0, ge=0.0, lt=1.0)
    mask_time_length: int = Field(default=10, ge=1)


class ModelConfig(_Strict):
    """The encoder: a hub id or local directory (``pretrained``), or a random-weight ``preset``.

    ``tiny`` (tens of thousands of parameters) is for tests and the local default; ``xlsr-300m`` is
    the real XLS-R 300M architecture with random weights, for performance work offline.
    ``revision``: the hub revision (branch, tag or commit) of ``pretrained``; ``best --export``
    pins the commit a trial loaded, so a rerun gets the same weights.

    ``pooling``: the embedding is the mean of the frames of the clip (``masked``: padding
    frames left out, so a clip's embedding does not depend on its batch) or of every frame of
    the padded batch (``all_frames``: the authors'). ``normalize_input``: each clip scaled to
    zero mean and unit variance over its valid samples before the encoder, as XLS-R's feature
    extractor does (``false``: raw audio, the authors').

    ``gradient_checkpointing``: recompute the transformer layers' activations in backward (about
    a third more compute for a fraction of the memory). ``auto`` turns it on only where a
    training step would not fit without it: off on CPU; on CUDA a one-time probe step at the
    largest training batch decides (:mod:`trainer.memory`). ``attention``: the encoder's
    attention through PyTorch's ``scaled_dot_product_attention`` (``sdpa``: PyTorch picks the
    flash or memory-efficient kernel when the inputs allow it) or HF's matmul-softmax-matmul
    (``eager``, the reference).
    """

    pretrained: str | None = None
    revision: str | None = None
    preset: Literal["tiny", "xlsr-300m"] | None = "tiny"
    embedding_dim: int = Field(default=256, ge=2)
    layers: Literal["mean", "last", "weighted"] = "mean"
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    attention: Literal["sdpa", "eager"] = "sdpa"
    spec_augment: SpecAugmentConfig = SpecAugmentConfig()
    pooling: Literal["masked", "all_frames"] = "masked"
    normalize_input: bool = True

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.pretrained is None) == (self.preset is None):
            raise ValueError("model: set exactly one of pretrained (hub id or path) and preset")
        if self.revision is not None and self.pretrained is None:
            raise ValueError("model.revision needs model.pretrained (a hub id)")
        return self


class LossConfig(_Strict):
    """SupCon's similarity and temperature, and its in-batch contrast set: ``global`` contrasts
    each rank's anchors with the batch gathered from every rank, ``local`` with this rank's own
    batch only (the authors' DDP code). The queue, when on, is global either way."""

    similarity: Similarity = "cosine"
    temperature: float = Field(default=0.3, gt=0.0)
    contrast: Contrast = "global"


class QueueConfig(_Strict):
    """The global cross-batch queue of detached (embedding, label) pairs (XBM-style memory).

    ``size`` counts entries of both classes. ``size: 0`` disables it. The queue is off (neither
    read nor filled) before epoch ``start_epoch`` (0-based) and global step ``start_step``.
    ``same_label``: what a queued entry with the anchor's own label is to that anchor.
    ``exclude`` (the authors', see the README): it leaves the anchor's contrast set, so an
    anchor contrasts with the opposite-class entries only, ``size / 2`` of them with
    class-balanced batches (the paper's |Q|). ``negative``: it stays in the denominator as a
    negative. ``positive``: it counts as a positive.
    """

    size: int = Field(default=0, ge=0)
    start_epoch: int = Field(default=0, ge=0)
    start_step: int = Field(default=0, ge=0)
    same_label: SameLabel = "exclude"


class DataConfig(_Strict):
    """Training and dev splits, evaluation sets by name, and the loader settings.

    ``eval_batch_size: auto``: 32 on CPU; on CUDA the largest power of two (at most 1024) whose
    inference forward at the evaluation crop fits in 70% of the GPU memory left to this process.
    ``num_workers: auto``: no worker process on CPU (the trainer's own threads use the cores); on
    CUDA one per CPU this process may use, less one for itself, at most 8.
    ``pad_multiple``: a ``full``-crop batch is zero-padded to its longest clip rounded up to a
    multiple of this many samples (null: no rounding); with ``runtime.compile`` that bounds the
    number of shapes the compiled encoder sees (16000: at most 10 for 10-s crops).
    ``attention_mask``: which samples the encoder's attention mask marks valid, in training and
    evaluation alike: ``length`` (every sample of the clip, none of the padding), ``nonzero``
    (the clip's non-zero samples before augmentation, the augmented clip zeroed elsewhere: the
    authors' code at their logged runs), ``nonzero_augmented`` (the non-zero samples after
    augmentation: the authors' earlier and later code). wav2vec2 reads a mask as a length, so
    under ``nonzero*`` a clip's exact zeros (digital silence) shorten what it attends to.
    """

    train: DatasetConfig
    dev: DatasetConfig
    eval: dict[str, DatasetConfig] = Field(default_factory=dict)
    train_crop: CropConfig = CropConfig(policy="random")
    eval_crop: CropConfig = CropConfig(policy="head")
    rawboost: RawBoostConfig = RawBoostConfig()
    sampler: SamplerConfig = SamplerConfig()
    eval_batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"
    pad_multiple: int | None = Field(default=None, ge=1)
    attention_mask: Literal["length", "nonzero", "nonzero_augmented"] = "length"


class Stage1Config(_Strict):
    """Stage-1 training. ``monitor_subset: N`` computes the per-epoch dev monitor (dev loss, dev
    EER) on a fixed class-balanced subset of N dev clips (the same clips every epoch and every
    trial); ``null`` uses the whole dev set. The stage-2 dev EER always uses the whole dev set."""

    epochs: int = Field(default=100, ge=1)
    lr_encoder: float = Field(default=1e-5, ge=0.0)
    lr_head: float = Field(default=5e-4, ge=0.0)
    weight_decay: float = Field(default=3e-3, ge=0.0)
    grad_clip: float | None = Field(default=5.0, gt=0.0)
    grad_clip_scope: Literal["head", "all"] = "head"
    warmup_steps: int = Field(default=0, ge=0)
    schedule: Literal["constant", "cosine"] = "constant"
    monitor: Literal["dev_loss", "dev_eer"] = "dev_loss"
    patience: int | None = Field(default=10, ge=1)
    monitor_subset: int | None = Field(default=None, ge=2)


class Stage2Config(_Strict):
    epochs: int = Field(default=200, ge=1)
    lr: float = Field(default=1e-4, gt=0.0)
    weight_decay: float = Field(default=1e-4, ge=0.0)
    batch_size: int = Field(default=64, ge=1)
    patience: int | None = Field(default=15, ge=1)


class RuntimeConfig(_Strict):
    """Device and numerics of each process. ``precision`` on CUDA: ``fp32`` is true fp32 (TF32
    off for matmuls and convolutions), ``torch-defaults`` is what PyTorch does when nobody sets
    its flags (fp32 matmuls, TF32 cuDNN convolutions: the authors' runs), ``tf32`` lets matmuls
    and convolutions use TF32, ``bf16`` autocasts to bfloat16 (with TF32 on), ``auto`` is bf16.
    On CPU everything is fp32 (``fp32``, ``torch-defaults`` and ``auto`` run there).
    ``resume_world_size``: ``same`` refuses to resume a checkpoint written by a different
    number of ranks (the sampler's plan, the epoch length and the global batch depend on it),
    ``any`` allows it.
    ``world_size``: the number of DDP ranks the config is meant for (the global batch is
    ``data.sampler.batch_size`` times it, and the epoch's length depends on it); a run with
    another number refuses to start. ``null``: any (``best --export`` sets it).

    Speed (none changes the method): ``compile`` runs the encoder through ``torch.compile``
    (the first steps pay the compilation; fixed crops keep one graph). ``adamw``: the optimiser's
    implementation, ``auto`` = ``fused`` (one kernel for all parameters) on CUDA, ``foreach`` on
    CPU. ``sync_every``: the host waits for the device (the non-finite-loss check, the progress
    bar's loss) once per this many steps rather than every step; a non-finite loss still names
    the exact step it appeared at. ``gpu_memory_fraction``: the share of the GPU's memory this
    process may allocate (a trial given 0.5 GPU gets 0.5; the Ray adapter sets it from the
    trial's GPU share), null for all of it. ``system_metrics``: rank 0 of a Ray trial logs
    MLflow system metrics (CPU, memory, disk, network; GPU utilisation and memory where NVML
    is installed) into the trial's run every 10 s (``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``);
    null: on when the trial trains on GPUs."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "torch-defaults", "tf32", "bf16"] = "auto"
    threads: int | None = Field(default=None, ge=1)
    progress: bool = True
    resume_world_size: Literal["same", "any"] = "same"
    world_size: int | None = Field(default=None, ge=1)
    compile: bool = False
    adamw: Literal["auto", "fused", "foreach", "for-loop"] = "auto"
    system_metrics: bool | None = None
    sync_every: int = Field(default=50, ge=1)
    gpu_memory_fraction: float | None = Field(default=None, gt=0.0, le=1.0)


class TrainerConfig(_Strict):
    seed: int = 0
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    queue: QueueConfig = QueueConfig()
    data: DataConfig
    stage1: Stage1Config = Stage1Config()
    stage2: Stage2Config = Stage2Config()
    runtime: RuntimeConfig = RuntimeConfig()


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key."""


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict in place, creating missing sections."""
    node = tree
    *parents, leaf = dotted.split(".")
    for i, key in enumerate(parents):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parents[: i + 1])} is not a section; cannot set {dotted}")
        node = child
    node[leaf] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """``["loss.temperature=0.1", ...]`` -> pairs; values are YAML scalars (``null``, ``1e-4``)."""
    pairs = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not key=value (e.g. loss.temperature=0.1)")
        pairs.append((key.strip(), yaml.safe_load(raw) if raw.strip() else None))
    return pairs


# pydantic names each member of a union it tried as a last location element ("literal['auto']",
# "constrained-int", "bool"); no config key looks like that.
_UNION_MEMBER = re.compile(r"^(literal\[.*\]|constrained-\w+|bool|int|float|str|none)$")


def _format_error(err: ValidationError) -> str:
    """One line per bad key; a value that fits none of a union's members (``int | 'auto'``) gets
    one line with every member's complaint, not one line per member under a made-up key."""
    lines: dict[str, list[str]] = {}
    inputs: dict[str, Any] = {}
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        if len(loc) > 1 and _UNION_MEMBER.match(loc[-1]):
            loc = loc[:-1]
            inputs[".".join(loc)] = e["input"]
        key = ".".join(loc) or "(top level)"
        lines.setdefault(key, []).append(
            "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        )
    out = []
    for key, msgs in lines.items():
        if key in inputs and len(msgs) > 1:
            out.append(f"  {key}: {inputs[key]!r} fits none of: " + "; ".join(msgs))
        else:
            out += [f"  {key}: {msg}" for msg in msgs]
    return "invalid trainer config:\n" + "\n".join(out)


def load_config(
    path: Path | str | None = None, overrides: list[str] | None = None, *, stored: bool = False
) -> TrainerConfig:
    """Read a YAML config (default ``trainer/configs/local.yaml``) and apply dotted overrides.
    ``stored``: the file was written by this project (a model folder's ``config.yaml``), maybe
    by an older version, whose renamed keys are read as today's (:func:`upgrade_stored`)."""
    path = Path(path) if path is not None else CONFIG_DIR / "local.yaml"
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    if stored:
        tree = upgrade_stored(tree)
    return apply_overrides(tree, dict(parse_overrides(overrides or [])))


# Keys older versions took, and what replaced them. A config a user writes with one fails,
# naming the new key; configs this project stored (model folders, MLflow params, saved sweeps,
# checkpoints) are read through upgrade_stored.
RENAMED = {
    "queue.positives": f"queue.same_label: {' | '.join(get_args(SameLabel))} (positives: false "
    "was 'negative', true was 'positive'; the authors' loss is 'exclude')",
}


def _same_label(positives: Any) -> str:
    return "positive" if positives in (True, "True", "true") else "negative"


def upgrade_stored(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a stored config in today's keys: nested (``{"queue": {"positives": ...}}``) or
    flat dotted params as MLflow holds them (``{"queue.positives": ...}``). ``positives: false``
    was today's ``same_label: negative`` and ``true`` today's ``positive``."""
    out = copy.deepcopy(dict(tree))
    if "queue.positives" in out:
        out.setdefault("queue.same_label", _same_label(out.pop("queue.positives")))
    queue = out.get("queue")
    if isinstance(queue, dict) and "positives" in queue:
        queue.setdefault("same_label", _same_label(queue.pop("positives")))
    return out


def config_from_params(params: Mapping[str, Any]) -> TrainerConfig:
    """The config of a run from its MLflow params (the flattened config, values decoded),
    written by this version or an older one."""
    return apply_overrides({}, upgrade_stored(params))


def _renamed_in(tree: Mapping[str, Any]) -> list[str]:
    found = []
    for dotted in RENAMED:
        node: Any = tree
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                break
            node = node[part]
        else:
            found.append(dotted)
    return found


def apply_overrides(
    base: TrainerConfig | Mapping[str, Any], overrides: Mapping[str, Any]
) -> TrainerConfig:
    """``base`` (a config or a nested dict of one) with each dotted key of ``overrides`` set,
    validated; :class:`ConfigError` names the bad key. The one "set dotted keys, then validate"
    for config files, search-space points and configs rebuilt from MLflow params."""
    tree = base.model_dump() if isinstance(base, TrainerConfig) else copy.deepcopy(dict(base))
    for key, value in overrides.items():
        set_dotted(tree, key, value)
    return validate_tree(tree)


def validate_tree(tree: dict[str, Any]) -> TrainerConfig:
    renamed = _renamed_in(tree)
    if renamed:
        lines = [f"  {key}: replaced by {RENAMED[key]}" for key in renamed]
        raise ConfigError("invalid trainer config:\n" + "\n".join(lines))
    try:
        return TrainerConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def to_yaml(cfg: TrainerConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def flatten(cfg: TrainerConfig) -> dict[str, Any]:
    """Dotted path -> leaf value, e.g. ``{"loss.temperature": 0.3, ...}``."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = node

    walk("", cfg.model_dump(mode="json"))
    return out


def resolve_roots(cfg: TrainerConfig) -> TrainerConfig:
    """``cfg`` with every corpus root absolute. Relative roots are relative to the working
    directory of the caller; resolve them there, because Ray and torchrun workers may run
    elsewhere."""
    data = cfg.data
    roots = {"data.train.root": data.train.root, "data.dev.root": data.dev.root}
    roots |= {f"data.eval.{name}.root": ds.root for name, ds in data.eval.items()}
    return apply_overrides(cfg, {k: Path(v).expanduser().resolve() for k, v in roots.items()})
