"""A confirmation's summary from known runs and scores: no Ray, no MLflow."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from orchestrator.reports.confirm import ConfigRuns, SeedRun, parent_metrics, summarise
from orchestrator.reports.confirm_output import markdown, plot, table_rows, to_json
from trainer.data.records import Utterance
from trainer.metrics import compute_eer

N_SPEAKERS = 12
PER_SPEAKER = 40  # 20 bona fide + 20 spoof each


def _utterances(name: str) -> list[Utterance]:
    return [
        Utterance(
            f"{name}_{i}",
            Path(f"{i}.flac"),
            "bonafide" if i % 2 == 0 else "spoof",
            speaker=f"spk{i // PER_SPEAKER}",
        )
        for i in range(N_SPEAKERS * PER_SPEAKER)
    ]


def _scores(utterances: list[Utterance], separation: float, seed: int) -> dict[str, float]:
    """Bona fide scores shifted up by ``separation``; each seed its own noise."""
    rng = np.random.default_rng(seed)
    return {
        u.utt_id: float(rng.normal(separation if u.is_bonafide else 0.0, 1.0)) for u in utterances
    }


def _world(separations: dict[str, float], seeds: int = 3):
    """Configurations (id -> separation), their runs' metrics and a score reader."""
    sets = {name: _utterances(name) for name in ("asv19", "itw")}
    scores, configs = {}, []
    for rank, (cid, sep) in enumerate(separations.items(), 1):
        runs = []
        for seed in range(seeds):
            run_id = f"{cid}-s{seed}"
            metrics = {}
            for name, utts in sets.items():
                scores[run_id, name] = _scores(utts, sep, zlib.crc32(f"{run_id}/{name}".encode()))
                bona = [scores[run_id, name][u.utt_id] for u in utts if u.is_bonafide]
                spoof = [scores[run_id, name][u.utt_id] for u in utts if not u.is_bonafide]
                metrics[f"eval/{name}/eer"] = compute_eer(bona, spoof)[0]
            metrics["eval/pooled_mean/eer"] = float(
                np.mean([metrics[f"eval/{n}/eer"] for n in sets])
            )
            metrics["sweep/objective"] = 1.0 / sep + 0.01 * seed  # the dev figure ranks
            runs.append(SeedRun(run_id, seed, metrics))
        configs.append(ConfigRuns(cid, rank, {"loss.temperature": sep}, tuple(runs)))
    return configs, sets, lambda run_id, name: scores[run_id, name]


def test_configurations_are_ranked_by_their_mean_and_compared_with_the_best(tmp_path: Path):
    # "weak" was the sweep's rank 1 but its mean dev figure is worse: it must come second.
    configs, sets, read = _world({"weak": 0.5, "strong": 3.0, "twin": 3.0})
    summary = summarise(configs, sets, read, "sweep/objective", "min", n_boot=300)
    assert [c.config_id for c in summary.configs] == ["strong", "twin", "weak"]
    stats = summary.stats["weak"]["eval/itw/eer"]
    values = [r.metrics["eval/itw/eer"] for r in configs[0].runs]
    assert stats["mean"] == pytest.approx(np.mean(values))
    assert stats["std"] == pytest.approx(np.std(values, ddof=1))
    assert (stats["min"], stats["max"], stats["n"]) == (min(values), max(values), 3)

    weak, twin = summary.deltas["weak"], summary.deltas["twin"]
    assert set(weak) == {"eval/asv19/eer", "eval/itw/eer", "eval/pooled_mean/eer"}
    # A far better configuration is distinguishable on every set; an equally good one is not.
    assert all(d.distinguishable and d.delta < 0 for d in weak.values())
    assert twin["eval/pooled_mean/eer"].verdict == "not distinguishable"
    for d in [*weak.values(), *twin.values()]:
        assert d.low <= d.delta <= d.high
        assert d.seed_se > 0 and d.test_se >= 0 and d.df >= 2
    pooled = summary.intervals["strong"]["eval/pooled_mean/eer"]
    assert pooled.n == 3 and pooled.low < pooled.mean < pooled.high
    strong_mean = summary.stats["strong"]["eval/pooled_mean/eer"]["mean"]
    weak_mean = summary.stats["weak"]["eval/pooled_mean/eer"]["mean"]
    assert weak["eval/pooled_mean/eer"].delta == pytest.approx(strong_mean - weak_mean)

    metrics = parent_metrics(summary)
    assert metrics["confirm/weak/eval/itw/eer_mean"] == pytest.approx(stats["mean"])
    assert metrics["confirm/weak/n_seeds"] == 3
    assert "confirm/weak/delta/eval/pooled_mean/eer_low" in metrics
    assert "confirm/weak/eval/itw/eer_ci_low" in metrics
    assert "confirm/strong/delta/eval/pooled_mean/eer" not in metrics  # the best is the baseline

    table = markdown(summary, "smoke")
    assert "| 1 | strong |" in table and "not distinguishable" in table
    assert "--include-sweep-trial" in table  # these runs hold no sweep trial apart
    doc = json.loads(to_json(summary, "smoke"))
    assert doc["best"] == "strong" and len(doc["configs"]) == 3
    assert doc["configs"][2]["vs_best"]["eval/pooled_mean/eer"]["verdict"] == "distinguishable"
    png = plot(summary, list(sets), tmp_path / "confirm.png")
    assert png.stat().st_size > 5000


def test_one_seed_has_no_spread_and_one_configuration_no_comparison():
    configs, sets, read = _world({"only": 2.0}, seeds=1)
    summary = summarise(configs, sets, read, "sweep/objective", "min", n_boot=50)
    assert summary.deltas == {}
    metrics = parent_metrics(summary)
    assert "confirm/only/eval/itw/eer_mean" in metrics
    assert "confirm/only/eval/itw/eer_std" not in metrics  # NaN for one seed: not logged
    assert "confirm/only/eval/itw/eer_ci_low" not in metrics


def test_fewer_than_two_seeds_give_no_verdict_said_plainly():
    configs, sets, read = _world({"a": 3.0, "b": 0.5}, seeds=2)
    one_seed = ConfigRuns("b", 2, configs[1].params, configs[1].runs[:1])
    summary = summarise([configs[0], one_seed], sets, read, "sweep/objective", "min", n_boot=50)
    d = summary.deltas["b"]["eval/pooled_mean/eer"]
    assert d.verdict == "no verdict" and not d.distinguishable and d.delta < 0
    _, rows = table_rows(summary)
    assert rows[1][-1].endswith("no verdict: fewer than 2 seeds")


def test_the_sweep_trial_is_shown_apart_and_counts_for_nothing():
    """Its own column; the stats, intervals and verdicts are over the fresh seeds alone."""
    configs, sets, read = _world({"a": 3.0, "b": 1.0}, seeds=4)
    apart = [
        ConfigRuns(c.config_id, c.sweep_rank, c.params, c.runs[1:], c.runs[0]) for c in configs
    ]
    summary = summarise(apart, sets, read, "sweep/objective", "min", n_boot=100)
    fresh = [r.metrics["eval/itw/eer"] for r in configs[0].runs[1:]]
    assert summary.stats["a"]["eval/itw/eer"]["n"] == 3
    assert summary.stats["a"]["eval/itw/eer"]["mean"] == pytest.approx(np.mean(fresh))
    header, rows = table_rows(summary)
    column = header.index("sweep trial pooled_mean %")
    sweep_pooled = configs[0].runs[0].metrics["eval/pooled_mean/eer"]
    assert rows[0][column] == f"{100 * sweep_pooled:.2f}"
    assert parent_metrics(summary)["confirm/a/sweep_trial/eval/pooled_mean/eer"] == sweep_pooled
    assert "shown apart" in markdown(summary, "smoke")


def test_a_run_missing_scores_is_named():
    configs, sets, read = _world({"a": 1.0, "b": 2.0}, seeds=2)

    def partial(run_id: str, name: str) -> dict[str, float]:
        scores = dict(read(run_id, name))
        if run_id == "b-s1":
            scores.pop(f"{name}_0")
        return scores

    with pytest.raises(ValueError, match="run b-s1, set asv19: no score for 1 utterance"):
        summarise(configs, sets, partial, "sweep/objective", "min", n_boot=20)
