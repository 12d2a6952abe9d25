"""Search spaces: shipped files load and validate, sampling is seeded, bad files name the key.

Loading and validating a space needs neither Ray nor Optuna; the tests that build Tune domains or
the sweep's searcher import them (nothing here starts Ray)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import optuna
import pytest
from ray.tune.search.optuna import OptunaSearch

from search_spaces import SPACES_DIR, SearchSpace, SpaceError, load_space, shipped_spaces
from trainer.config import ConfigError, apply_overrides, flatten, load_config


@pytest.fixture(scope="module")
def base():
    return load_config()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def _draws(space: SearchSpace, n: int, seed: int) -> list[dict]:
    """``n`` independent draws (Optuna's RandomSampler) from the Optuna distributions the
    sweep's TPE samples, with the fixed keys added: full points of the space."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    distributions = space.optuna_distributions()
    return [{**space.fixed(), **study.ask(distributions).params} for _ in range(n)]


def test_the_spaces_ship_with_the_package() -> None:
    names = {p.name for p in shipped_spaces()}
    assert {"default.yaml", "paper_grid.yaml", "paper_factorial.yaml", "smoke.yaml"} <= names


@pytest.mark.parametrize("path", shipped_spaces(), ids=lambda p: p.name)
def test_shipped_space_loads_and_its_configs_validate(path: Path, base) -> None:
    space = load_space(path, base)
    assert set(space.params) <= set(flatten(base))
    if space.is_grid:
        points = space.grid_points()
        if not space.blocks:
            assert len(points) == math.prod(len(p.values) for p in space.params.values())
        assert len({repr(sorted(p.items())) for p in points}) == len(points)
    else:
        points = _draws(space, 8, seed=0)
        assert len(points) == 8
    keys = set(space.params) | {k for block in space.blocks for k in block}
    for point in points:
        assert set(point) == keys
        flat = flatten(apply_overrides(base, point))
        assert all(flat[key] == value for key, value in point.items())


def test_default_space_is_tpe_over_loss_and_queue(base) -> None:
    space = load_space(SPACES_DIR / "default.yaml", base)
    assert not space.is_grid
    assert set(space.params) == {
        "loss.temperature",
        "queue.size",
        "queue.start_epoch",
        "loss.similarity",
    }
    with pytest.raises(SpaceError, match="not a grid space"):
        space.grid_points()


def test_paper_grid_is_the_authors_16_runs(base) -> None:
    """combine_plots.py's study: a temperature sweep without a queue for both similarities, and
    a queue ablation at cosine 0.3 and angular 0.07; nothing else, nothing twice."""
    space = load_space(SPACES_DIR / "paper_grid.yaml", base)
    points = space.grid_points()
    got = [(p["loss.similarity"], p["loss.temperature"], p["queue.size"]) for p in points]
    temperature_sweep = itertools.product(["cosine", "angular"], [0.07, 0.1, 0.3, 0.6], [0])
    queue_ablation = [("cosine", 0.3, q) for q in (256, 1024, 4096, 8192)]
    queue_ablation += [("angular", 0.07, q) for q in (256, 1024, 4096, 8192)]
    assert got == [*temperature_sweep, *queue_ablation]
    assert {(p["queue.start_epoch"], p["queue.same_label"]) for p in points} == {(5, "exclude")}
    with pytest.raises(SpaceError, match="grid space has no optuna_search"):
        space.optuna_search("encoder/dev/eer", "min", seed=0)


def test_the_factorial_is_its_own_file_of_40_points(base) -> None:
    points = load_space(SPACES_DIR / "paper_factorial.yaml", base).grid_points()
    expected = itertools.product(
        ["cosine", "angular"], [0.07, 0.1, 0.3, 0.6], [0, 256, 1024, 4096, 8192]
    )
    got = [(p["loss.similarity"], p["loss.temperature"], p["queue.size"]) for p in points]
    assert got == list(expected)


def test_a_union_of_grids_runs_each_point_once_with_the_same_keys(tmp_path: Path, base) -> None:
    path = _write(
        tmp_path,
        "grids:\n"
        "  - {loss.temperature: {grid: [0.1, 0.3]}, queue.size: 0}\n"
        "  - {loss.temperature: 0.3, queue.size: {grid: [0, 16]}}\n"  # (0.3, 0) again
        "  - {loss.similarity: angular}\n"  # a point; the others keep the base's similarity
        "queue.start_epoch: {grid: [1, 2]}\n",  # multiplies every block
    )
    space = load_space(path, base)
    got = [
        (p["loss.temperature"], p["queue.size"], p["loss.similarity"], p["queue.start_epoch"])
        for p in space.grid_points()
    ]
    t, q = base.loss.temperature, base.queue.size
    assert got == [
        (0.1, 0, "cosine", 1),
        (0.1, 0, "cosine", 2),
        (0.3, 0, "cosine", 1),
        (0.3, 0, "cosine", 2),
        (0.3, 16, "cosine", 1),
        (0.3, 16, "cosine", 2),
        (t, q, "angular", 1),
        (t, q, "angular", 2),
    ]
    assert space.largest("queue.size", base) == max(16, q)
    assert space.largest("queue.start_epoch", base) == 2
    assert set(space.study_distributions()) == {
        "loss.temperature",
        "queue.size",
        "loss.similarity",
        "queue.start_epoch",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("grids: {loss.temperature: 0.3}", "expected a non-empty list of grids"),
        ("grids: []", "expected a non-empty list of grids"),
        ("grids: [3]", r"grids #1: expected a mapping"),
        (
            "grids: [{loss.temperature: {uniform: [0.1, 0.3]}}]",
            r"grids #1: loss\.temperature: a block of a union takes grid or fixed values",
        ),
        ("grids: [{loss.temprature: 0.3}]", r"loss\.temprature: not a trainer config path"),
        (
            "grids: [{loss.temperature: 0.3}]\nloss.temperature: 0.1",
            r"loss\.temperature: set both in grids and outside it",
        ),
        (
            "grids: [{loss.temperature: 0.3}]\nqueue.size: {categorical: [0, 8]}",
            r"grids \(a union of grids\) cannot be mixed with sampled keys",
        ),
        ("grids: [{loss.similarity: euclid}]", r"loss\.similarity.*euclid.*invalid"),
    ],
)
def test_bad_unions_fail_naming_the_block(tmp_path: Path, base, text: str, message: str) -> None:
    with pytest.raises(SpaceError, match=message):
        load_space(_write(tmp_path, text + "\n"), base)


def test_smoke_space_has_two_points(base) -> None:
    points = load_space(SPACES_DIR / "smoke.yaml", base).grid_points()
    assert points == [
        {"loss.temperature": 0.1, "queue.size": 16, "queue.start_epoch": 1},
        {"loss.temperature": 0.3, "queue.size": 16, "queue.start_epoch": 1},
    ]


def test_sampling_is_seeded(base) -> None:
    space = load_space(SPACES_DIR / "default.yaml", base)
    first = space.optuna_search("encoder/dev/eer", "min", seed=3)
    again = space.optuna_search("encoder/dev/eer", "min", seed=3)
    other = space.optuna_search("encoder/dev/eer", "min", seed=4)
    ids = [f"t{i}" for i in range(6)]
    draws = [first.suggest(i) for i in ids]
    assert draws == [again.suggest(i) for i in ids]
    assert draws != [other.suggest(i) for i in ids]


def test_samples_respect_bounds_and_choices(tmp_path: Path, base) -> None:
    path = _write(
        tmp_path,
        "loss.temperature: {loguniform: [0.05, 0.5]}\n"
        "queue.start_epoch: {int: [2, 4]}\n"
        "queue.size: {int: [0, 1024, 256]}\n"
        "loss.similarity: {categorical: [angular]}\n"
        "stage1.lr_head: {uniform: [1.0e-4, 2.0e-4]}\n",
    )
    samples = _draws(load_space(path, base), 300, seed=0)
    temps = [s["loss.temperature"] for s in samples]
    assert min(temps) >= 0.05 and max(temps) <= 0.5
    # Log-uniform: about half the draws fall below the geometric midpoint.
    below = sum(t < math.sqrt(0.05 * 0.5) for t in temps) / len(temps)
    assert 0.35 < below < 0.65
    assert {s["queue.start_epoch"] for s in samples} == {2, 3, 4}
    assert {s["queue.size"] for s in samples} == {0, 256, 512, 768, 1024}
    assert {s["loss.similarity"] for s in samples} == {"angular"}
    assert all(1e-4 <= s["stage1.lr_head"] <= 2e-4 for s in samples)


def test_optuna_search_suggests_dotted_keys(base) -> None:
    space = load_space(SPACES_DIR / "default.yaml", base)
    searcher = space.optuna_search("encoder/dev/eer", "min", seed=0)
    assert isinstance(searcher, OptunaSearch)
    for trial_id in ("t0", "t1", "t2"):
        config = searcher.suggest(trial_id)
        assert set(config) == set(space.params)
        flat = flatten(apply_overrides(base, config))
        assert all(flat[key] == value for key, value in config.items())
    # The same seed gives the same first sampled trial.
    again = space.optuna_search("encoder/dev/eer", "min", seed=0)
    assert again.suggest("a") == space.optuna_search("encoder/dev/eer", "min", seed=0).suggest("a")
    with pytest.raises(ValueError, match="needs a metric and mode"):
        space.optuna_search(None, None, seed=0)  # type: ignore[arg-type]


def test_tune_domains_keep_inclusive_int_bounds(tmp_path: Path, base) -> None:
    path = _write(
        tmp_path,
        "queue.start_epoch: {int: [0, 8]}\nqueue.size: {int: [0, 512, 256]}\n"
        "queue.same_label: negative\n",
    )
    space = load_space(path, base)
    domains = {key: param.tune_domain() for key, param in space.params.items()}
    assert domains["queue.same_label"] == "negative"
    optuna_space = space.optuna_distributions()
    assert set(optuna_space) == {"queue.start_epoch", "queue.size"}  # fixed keys are not sampled
    assert (optuna_space["queue.start_epoch"].low, optuna_space["queue.start_epoch"].high) == (0, 8)
    assert (optuna_space["queue.size"].high, optuna_space["queue.size"].step) == (512, 256)
    draws = domains["queue.start_epoch"].sample(size=400, random_state=0)
    assert set(draws) == set(range(9))


def test_space_points_apply_and_validate(base) -> None:
    """Points are applied with the trainer's one "set dotted keys, then validate"."""
    cfg = apply_overrides(base, {"loss.temperature": 0.07, "data.eval.itw.root": "/elsewhere"})
    assert cfg.loss.temperature == 0.07 and str(cfg.data.eval["itw"].root) == "/elsewhere"
    assert base.loss.temperature == 0.3
    with pytest.raises(ConfigError, match=r"queue\.size: Input should be greater than or equal"):
        apply_overrides(base, {"queue.size": -1})
    with pytest.raises(ConfigError, match=r"loss\.temprature: unknown key"):
        apply_overrides(base, {"loss.temprature": 0.1})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "loss.temprature: {uniform: [0.1, 0.5]}",
            r"loss\.temprature: not a trainer config path; "
            r"did you mean loss\.temperature",
        ),
        ("loss: {uniform: [0.1, 0.5]}", "loss: is a config section"),
        ("queue.positives: false", r"queue\.positives: replaced by queue\.same_label"),
        ("loss.temperature: {loguniform: [0, 1]}", r"loss\.temperature: loguniform needs lo > 0"),
        ("loss.temperature: {uniform: [1, 0]}", r"loss\.temperature: uniform needs lo < hi"),
        ("loss.temperature: {uniform: [1e-3, 1]}", r"loss\.temperature: '1e-3' is a string"),
        ("loss.temperature: {normal: [0.1, 1]}", r"loss\.temperature: unknown distribution"),
        ("loss.temperature: {uniform: 0.1}", r"loss\.temperature: uniform needs a non-empty list"),
        ("queue.size: {categorical: []}", r"queue\.size: categorical needs a non-empty list"),
        ("queue.size: {categorical: [0, 0]}", r"queue\.size: categorical lists a value twice"),
        ("queue.size: [0, 256]", r"queue\.size: a bare list is ambiguous"),
        ("queue.size: {int: [0, 2.5]}", r"queue\.size: int needs \[lo, hi\]"),
        ("queue.size: {int: [1, 9, 2]}", r"queue\.size: int lo and hi must be multiples"),
        ("queue.size: {int: [-5, 3]}", r"queue\.size: -5 is invalid here.*greater than or equal"),
        ("queue.size: {categorical: [-1, 8]}", r"queue\.size: -1 is invalid here"),
        ("queue.size: {loguniform: [1, 4096]}", r"queue\.size: the trainer wants an int"),
        ("loss.similarity: {grid: [cosine, euclid]}", r"loss\.similarity: 'euclid' is invalid"),
        ("model.dropout: {uniform: [0.0, 1.0]}", r"model\.dropout: 1\.0 is invalid here"),
        (
            "loss.similarity: {grid: [cosine, angular]}\nqueue.size: {categorical: [0, 8]}",
            r"grid keys \['loss\.similarity'\] cannot be mixed with sampled keys \['queue\.size'\]",
        ),
        (
            "model.pretrained: {categorical: [null, facebook/wav2vec2-xls-r-300m]}",
            r"model\.pretrained: 'facebook/wav2vec2-xls-r-300m' is invalid.*exactly one",
        ),
        ("- loss.temperature", "expected a mapping"),
        ("", "expected a mapping"),
        ("{}", "defines no parameters"),
        ("loss.temperature: {uniform: [0.1", "not valid YAML"),
    ],
)
def test_bad_spaces_fail_naming_file_and_key(tmp_path: Path, base, text: str, message: str) -> None:
    path = _write(tmp_path, text + "\n")
    with pytest.raises(SpaceError, match=message) as info:
        load_space(path, base)
    assert str(path) in str(info.value)


def test_combinations_are_checked(tmp_path: Path, base) -> None:
    # Each value is fine with the base's other bounds; min_f 5000 with max_f 1000 is not.
    path = _write(
        tmp_path,
        "data.rawboost.min_f: {grid: [20.0, 5000.0]}\n"
        "data.rawboost.max_f: {grid: [1000.0, 8000.0]}\n",
    )
    with pytest.raises(SpaceError, match=r"the combination .* is invalid.*must not exceed"):
        load_space(path, base)


def test_missing_file(tmp_path: Path, base) -> None:
    with pytest.raises(SpaceError, match="search space file not found"):
        load_space(tmp_path / "nope.yaml", base)


def test_eval_set_keys_follow_the_base_config(tmp_path: Path, base) -> None:
    path = _write(tmp_path, "data.eval.itw.on_missing: {grid: [error, skip]}\n")
    assert len(load_space(path, base).grid_points()) == 2
    path = _write(tmp_path, "data.eval.other.on_missing: {grid: [error, skip]}\n")
    with pytest.raises(SpaceError, match=r"data\.eval\.other\.on_missing: not a trainer config"):
        load_space(path, base)
