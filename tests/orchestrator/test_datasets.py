"""A trial's corpora as MLflow dataset inputs: one per split, the protocol's digest, its
counts; and the check ``best`` warns with when trials read different corpus versions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mlflow.tracking import MlflowClient

from orchestrator.tracking.datasets import corpus_inputs, digest_mismatches, file_digest
from tests.helpers import data_overrides
from trainer.config import load_config


def _cfg(synth_root: Path):
    return load_config(None, data_overrides(synth_root))


def test_each_split_is_an_input_with_its_protocols_digest(synth_root: Path) -> None:
    inputs = corpus_inputs(_cfg(synth_root))
    contexts = {
        i.dataset.name: {t.key: t.value for t in i.tags}["mlflow.data.context"] for i in inputs
    }
    assert contexts == {
        "train:asvspoof2019/train": "training",
        "dev:asvspoof2019/dev": "validation",
        "asv19:asvspoof2019/eval": "evaluation",
        "itw:itw/eval": "evaluation",
    }
    by_name = {i.dataset.name: i.dataset for i in inputs}
    key = synth_root / "LA" / "ASVspoof2019_LA_cm_protocols" / "ASVspoof2019.LA.cm.eval.trl.txt"
    assert by_name["asv19:asvspoof2019/eval"].digest == file_digest(key)
    profile = json.loads(by_name["asv19:asvspoof2019/eval"].profile)
    assert profile["rows"] == len(key.read_text().splitlines()) == 68
    assert profile["labels"] == {"bonafide": 16, "spoof": 52}


def test_a_changed_protocol_is_a_mismatch(synth_root: Path, tmp_path: Path) -> None:
    copy = tmp_path / "synth"
    shutil.copytree(synth_root, copy, ignore=shutil.ignore_patterns("*.flac", "*.wav"))
    key = copy / "LA" / "ASVspoof2019_LA_cm_protocols" / "ASVspoof2019.LA.cm.train.trn.txt"
    key.write_text("\n".join(key.read_text().splitlines()[:-1]) + "\n")  # one row fewer
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("e")
    runs = []
    for root in (synth_root, synth_root, copy):
        run = client.create_run(exp)
        client.log_inputs(run.info.run_id, corpus_inputs(_cfg(root)))
        runs.append(client.get_run(run.info.run_id))
    assert digest_mismatches(runs[:2]) == {}
    assert list(digest_mismatches(runs)) == ["train:asvspoof2019/train"]
