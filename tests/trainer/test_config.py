"""The typed trainer config: shipped YAML files, dotted overrides, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config import (
    CONFIG_DIR,
    ConfigError,
    apply_overrides,
    config_from_params,
    flatten,
    load_config,
)
from trainer.identity import config_id, method_keys


@pytest.mark.parametrize("name", ["local.yaml", "paper.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    cfg = load_config(CONFIG_DIR / name)
    assert cfg.data.train.split == "train" and set(cfg.data.eval) == {
        "asv19",
        "itw",
        "asv21la",
        "asv21df",
    }


def test_paper_config_has_the_paper_hyperparameters() -> None:
    cfg = load_config(CONFIG_DIR / "paper.yaml")
    assert cfg.model.pretrained == "facebook/wav2vec2-xls-r-300m"
    assert (cfg.stage1.lr_encoder, cfg.stage1.lr_head, cfg.stage1.weight_decay) == (
        1e-5,
        5e-4,
        3e-3,
    )
    assert (cfg.queue.size, cfg.queue.start_epoch) == (4096, 5)
    assert (cfg.data.sampler.batch_size, cfg.data.sampler.bonafide_per_batch) == (16, 8)
    assert (cfg.stage2.lr, cfg.stage2.batch_size, cfg.stage2.patience) == (1e-4, 64, 15)
    # The authors' way where the code once deviated silently (issue 11).
    assert cfg.data.sampler.epoch == "bonafide_pass" and cfg.loss.contrast == "local"
    assert cfg.queue.same_label == "exclude" and cfg.stage1.patience == 5
    # The authors' front end (issue 23): plain mean over the padded batch, raw audio, the mask
    # from non-zero samples, torch's default numerics.
    assert (cfg.model.pooling, cfg.model.normalize_input) == ("all_frames", False)
    assert cfg.data.attention_mask == "nonzero" and cfg.runtime.precision == "torch-defaults"
    assert cfg.data.rawboost.algo == "paper" and cfg.data.rawboost.p == 0.7
    assert cfg.model.spec_augment.mask_time_prob == 0.075 and cfg.seed == 1337


def test_the_old_queue_key_fails_naming_its_replacement(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"queue\.positives: replaced by queue\.same_label"):
        load_config(None, ["queue.positives=false"])
    written = tmp_path / "old.yaml"
    written.write_text(
        (CONFIG_DIR / "local.yaml").read_text().replace("same_label: exclude", "positives: true")
    )
    with pytest.raises(ConfigError, match="'negative', true was 'positive'"):
        load_config(written)


@pytest.mark.parametrize(("positives", "same_label"), [(False, "negative"), (True, "positive")])
def test_stored_configs_of_older_versions_still_load(
    tmp_path: Path, positives: bool, same_label: str
) -> None:
    """A model folder's config.yaml, or a run's MLflow params, written before queue.same_label:
    read as the loss they trained, not refused."""
    written = tmp_path / "config.yaml"
    text = (CONFIG_DIR / "local.yaml").read_text()
    written.write_text(text.replace("same_label: exclude", f"positives: {str(positives).lower()}"))
    assert load_config(written, stored=True).queue.same_label == same_label
    params = flatten(load_config())
    del params["queue.same_label"]
    params["queue.positives"] = positives
    assert config_from_params(params).queue.same_label == same_label


def test_overrides_apply_with_yaml_types() -> None:
    cfg = load_config(
        None,
        [
            "loss.temperature=0.07",
            "loss.similarity=angular",
            "queue.size=0",
            "stage1.patience=null",
            "data.eval.itw.root=/elsewhere",
        ],
    )
    assert cfg.loss.temperature == 0.07 and cfg.loss.similarity == "angular"
    assert cfg.queue.size == 0 and cfg.stage1.patience is None
    assert cfg.data.eval["itw"].root == Path("/elsewhere")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("loss.temprature=0.1", "loss.temprature: unknown key"),
        ("queue.size=-5", "queue.size: Input should be greater than or equal to 0"),
        ("queue.size=lots", "queue.size: Input should be a valid integer"),
        ("loss.similarity=euclid", "loss.similarity: Input should be 'cosine' or 'angular'"),
        ("data.train.kind=asvspoof2020", "data.train.kind"),
        ("model.pretrained=facebook/wav2vec2-xls-r-300m", "set exactly one of pretrained"),
        ("data.sampler.bonafide_fraction=0.01", "leaves a class with no clip"),
    ],
)
def test_bad_values_fail_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [override])


def test_a_value_that_fits_no_member_of_an_auto_union_gets_one_line() -> None:
    """``data.eval_batch_size: int | auto``: one line under the user's key with both
    complaints, not pydantic's two lines under made-up keys (``...constrained-int``)."""
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.eval_batch_size=lots", "model.gradient_checkpointing=maybe"])
    lines = set(str(err.value).splitlines()[1:])
    assert lines == {
        "  data.eval_batch_size: 'lots' fits none of: Input should be a valid integer, unable "
        "to parse string as an integer; Input should be 'auto'",
        "  model.gradient_checkpointing: 'maybe' fits none of: Input should be a valid "
        "boolean, unable to interpret input; Input should be 'auto'",
    }


def test_malformed_overrides_and_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not key=value"):
        load_config(None, ["loss.temperature"])
    with pytest.raises(ConfigError, match=r"loss\.temperature is not a section"):
        load_config(None, ["loss.temperature.x=1"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(tmp_path / "list.yaml")


def test_flatten_gives_dotted_paths() -> None:
    flat = flatten(load_config())
    assert flat["loss.temperature"] == 0.3
    assert flat["queue.start_epoch"] == 2
    assert flat["data.eval.itw.kind"] == "itw"


# What config_id ignores, listed here so a change to it is a decision: the seed, where the
# corpora live, and how a run runs. Every other leaf is the method or what it is measured on.
IGNORED = {
    "seed",
    "data.train.root",
    "data.dev.root",
    "data.eval.asv19.root",
    "data.eval.itw.root",
    "data.eval.asv21la.root",
    "data.eval.asv21df.root",
    "model.gradient_checkpointing",
    "model.attention",
    "data.eval_batch_size",
    "data.num_workers",
    "runtime.device",
    "runtime.threads",
    "runtime.progress",
    "runtime.resume_world_size",
    "runtime.world_size",
    "runtime.compile",
    "runtime.adamw",
    "runtime.sync_every",
    "runtime.gpu_memory_fraction",
    "runtime.system_metrics",
}
IGNORED_VALUES = {
    "seed": 2024,
    "model.gradient_checkpointing": True,
    "model.attention": "eager",
    "data.eval_batch_size": 7,
    "data.num_workers": 3,
    "runtime.device": "cpu",
    "runtime.threads": 5,
    "runtime.progress": False,
    "runtime.resume_world_size": "any",
    "runtime.world_size": 4,
    "runtime.compile": True,
    "runtime.adamw": "for-loop",
    "runtime.sync_every": 3,
    "runtime.gpu_memory_fraction": 0.5,
    "runtime.system_metrics": True,
}


def test_config_id_is_the_method_and_the_world_size() -> None:
    cfg = load_config()
    same = config_id(cfg, 2)
    assert len(same) == 12 and int(same, 16) >= 0
    assert set(flatten(cfg)) - set(method_keys(cfg)) == IGNORED
    for key, value in IGNORED_VALUES.items():
        assert config_id(apply_overrides(cfg, {key: value}), 2) == same, key
    assert config_id(apply_overrides(cfg, {"data.train.root": "/elsewhere/LA"}), 2) == same
    # The method, what it is measured on and the world size do count.
    for key, value in {
        "loss.temperature": 0.07,
        "data.sampler.batch_size": 32,
        "queue.same_label": "negative",
        "runtime.precision": "fp32",
        "data.eval.itw.on_missing": "skip",
        "stage1.monitor": "dev_loss",
    }.items():
        assert config_id(apply_overrides(cfg, {key: value}), 2) != same, key
    assert config_id(cfg, 1) != same
    # Rebuilt from its flattened params (as from MLflow), the config has the same id.
    assert config_id(apply_overrides({}, flatten(cfg)), 2) == same


def test_world_size_and_revision_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"runtime\.world_size"):
        load_config(None, ["runtime.world_size=0"])
    with pytest.raises(ConfigError, match=r"model\.revision needs model\.pretrained"):
        load_config(None, ["model.revision=abc"])
