"""Readers on the synthetic corpus and on hand-written files in each official format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydantic
import pytest
import soundfile as sf

from trainer.data.config import DatasetConfig
from trainer.data.corpora import parse_protocol, read_corpus
from trainer.data.errors import CorpusError, MissingAudioError, ProtocolFormatError
from trainer.data.synth import SIZES

TINY = SIZES["micro"]


def _cfg(kind: str, root: Path, **kw) -> DatasetConfig:
    return DatasetConfig(kind=kind, root=root, **kw)


def _write_flac(path: Path, seconds: float = 0.1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(int(16000 * seconds), np.float32), 16000, format="FLAC")


# --- the synthetic corpus -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("split", "counts", "prefix"),
    [("train", TINY.train, "LA_T_"), ("dev", TINY.dev, "LA_D_"), ("eval", TINY.eval, "LA_E_")],
)
def test_asvspoof2019_splits(synth_root: Path, split: str, counts, prefix: str) -> None:
    corpus = read_corpus(_cfg("asvspoof2019", synth_root / "LA", split=split))
    bona = [u for u in corpus.utterances if u.is_bonafide]
    spoof = [u for u in corpus.utterances if not u.is_bonafide]
    assert (len(bona), len(spoof)) == counts
    assert all(u.utt_id.startswith(prefix) and u.path.is_file() for u in corpus.utterances)
    assert all(u.attack is None for u in bona)
    expected = (
        {"A01", "A02", "A03", "A04", "A05", "A06"}
        if split != "eval"
        else {f"A{i:02d}" for i in range(7, 20)}
    )
    assert {u.attack for u in spoof} == expected


def test_asvspoof2019_accepts_folder_above_la(synth_root: Path) -> None:
    assert len(read_corpus(_cfg("asvspoof2019", synth_root, split="dev"))) == sum(TINY.dev)


@pytest.mark.parametrize("kind", ["asvspoof2021-la", "asvspoof2021-df"])
def test_asvspoof2021_subsets(synth_root: Path, kind: str) -> None:
    root = synth_root / "ASVspoof2021"
    sizes = {
        s: len(parse_protocol(_cfg(kind, root, subset=s))[1])
        for s in ("eval", "progress", "hidden", "all")
    }
    assert sizes["all"] == sum(TINY.la21 if kind.endswith("la") else TINY.df21)
    assert sizes["eval"] + sizes["progress"] + sizes["hidden"] == sizes["all"]
    assert sizes["eval"] > sizes["progress"] > 0 and sizes["hidden"] > 0
    default = read_corpus(_cfg(kind, root))
    assert {u.extra["subset"] for u in default.utterances} == {"eval"}
    assert {u.label for u in default.utterances} == {"bonafide", "spoof"}


def test_itw(synth_root: Path) -> None:
    corpus = read_corpus(_cfg("itw", synth_root / "itw"))
    labels = [u.label for u in corpus.utterances]
    assert (labels.count("bonafide"), labels.count("spoof")) == TINY.itw
    assert all(u.path.suffix == ".wav" and u.path.is_file() for u in corpus.utterances)
    assert any(" " in (u.speaker or "") for u in corpus.utterances)


# --- hand-written files in each official format -----------------------------------------------


def test_handwritten_asvspoof2019(tmp_path: Path) -> None:
    proto = tmp_path / "LA" / "ASVspoof2019_LA_cm_protocols" / "ASVspoof2019.LA.cm.train.trn.txt"
    proto.parent.mkdir(parents=True)
    proto.write_text("LA_0079 LA_T_1004644 - A01 spoof\nLA_0079 LA_T_1138215 - - bonafide\n\n")
    for utt in ("LA_T_1004644", "LA_T_1138215"):
        _write_flac(tmp_path / "LA" / "ASVspoof2019_LA_train" / "flac" / f"{utt}.flac")
    spoof, bona = read_corpus(_cfg("asvspoof2019", tmp_path / "LA", split="train")).utterances
    assert (spoof.utt_id, spoof.label, spoof.attack, spoof.speaker) == (
        "LA_T_1004644",
        "spoof",
        "A01",
        "LA_0079",
    )
    assert (bona.label, bona.attack, bona.key) == (
        "bonafide",
        None,
        ("LA_0079", "-", "-", "bonafide"),
    )


def _asv21(tmp_path: Path, track: str, lines: list[str]) -> Path:
    key = tmp_path / "keys" / track / "CM" / "trial_metadata.txt"
    key.parent.mkdir(parents=True)
    key.write_text("\n".join(lines) + "\n")
    for line in lines:
        _write_flac(tmp_path / f"ASVspoof2021_{track}_eval" / "flac" / f"{line.split()[1]}.flac")
    return tmp_path


def test_handwritten_asvspoof2021_la(tmp_path: Path) -> None:
    root = _asv21(
        tmp_path,
        "LA",
        [
            "LA_0009 LA_E_9332881 alaw ita_tx A07 spoof notrim eval",
            "LA_0009 LA_E_5013670 alaw ita_tx bonafide bonafide notrim eval",
            "LA_0010 LA_E_1000001 ulaw sin_tx A08 spoof notrim progress",
        ],
    )
    spoof, bona = read_corpus(_cfg("asvspoof2021-la", root)).utterances
    assert (spoof.label, spoof.attack, spoof.extra["codec"], spoof.extra["transmission"]) == (
        "spoof",
        "A07",
        "alaw",
        "ita_tx",
    )
    # The label is column 5 in 2021 (column 4 holds the attack, "bonafide" for bona fide).
    assert (bona.label, bona.attack) == ("bonafide", None)
    assert len(parse_protocol(_cfg("asvspoof2021-la", root, subset="all"))[1]) == 3


def test_handwritten_asvspoof2021_df(tmp_path: Path) -> None:
    root = _asv21(
        tmp_path,
        "DF",
        [
            "LA_0023 DF_E_2000011 nocodec asvspoof A14 spoof notrim progress "
            "traditional_vocoder - - - -",
            "LA_0031 DF_E_2000026 mp3m4a vcc2018 bonafide bonafide notrim eval - - - - -",
            "LA_0032 DF_E_2000027 low_m4a vcc2020 A07 spoof notrim eval "
            "neural_vocoder_autoregressive - - - -",
        ],
    )
    utts = read_corpus(_cfg("asvspoof2021-df", root)).utterances
    assert [u.utt_id for u in utts] == ["DF_E_2000026", "DF_E_2000027"]
    assert utts[1].extra["vocoder"] == "neural_vocoder_autoregressive"
    assert utts[1].extra["compression"] == "low_m4a"
    progress = read_corpus(
        _cfg("asvspoof2021-df", root, subset="progress"), require_both_classes=False
    )
    assert [u.attack for u in progress.utterances] == ["A14"]


def test_handwritten_itw(tmp_path: Path) -> None:
    root = tmp_path / "release_in_the_wild"
    root.mkdir()
    (root / "meta.csv").write_text(
        "file,speaker,label\n0.wav,Alec Guinness,spoof\n4.wav,Christopher Hitchens,bona-fide\n"
    )
    for name in ("0.wav", "4.wav"):
        sf.write(root / name, np.zeros(800, np.float32), 16000)
    spoof, bona = read_corpus(_cfg("itw", tmp_path)).utterances
    assert (spoof.utt_id, spoof.label, spoof.speaker) == ("0.wav", "spoof", "Alec Guinness")
    assert (bona.label, bona.speaker) == ("bonafide", "Christopher Hitchens")


def test_handwritten_manifest(tmp_path: Path) -> None:
    _write_flac(tmp_path / "audio" / "a.flac")
    sf.write(tmp_path / "audio" / "b.wav", np.zeros(800, np.float32), 16000)
    (tmp_path / "train.csv").write_text(
        "path,label,speaker,attack\naudio/a.flac,bonafide,s1,\naudio/b.wav,spoof,s2,TTS-1\n"
    )
    bona, spoof = read_corpus(_cfg("manifest", tmp_path, split="train")).utterances
    assert (bona.utt_id, bona.path, bona.speaker) == (
        "audio/a",
        tmp_path / "audio" / "a.flac",
        "s1",
    )
    assert (spoof.label, spoof.attack) == ("spoof", "TTS-1")


# --- bad input ---------------------------------------------------------------------------------


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=r"root not found: .*nowhere"):
        read_corpus(_cfg("asvspoof2019", tmp_path / "nowhere", split="train"))


def test_missing_protocol(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=r"key file not found: .*trial_metadata.txt"):
        read_corpus(_cfg("asvspoof2021-df", tmp_path))


def test_wrong_column_count_names_line(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "LA" / "CM" / "trial_metadata.txt"
    key.parent.mkdir(parents=True)
    # A 2019-style 5-column row in a 2021 key file.
    key.write_text(
        "LA_0009 LA_E_9332881 alaw ita_tx A07 spoof notrim eval\nLA_0079 LA_E_1004644 - A01 spoof\n"
    )
    with pytest.raises(ProtocolFormatError, match=r"trial_metadata.txt:2: expected 8 columns"):
        parse_protocol(_cfg("asvspoof2021-la", tmp_path))


def test_unknown_label_and_subset_name_the_line(tmp_path: Path) -> None:
    root = _asv21(tmp_path, "LA", ["LA_0009 LA_E_9332881 alaw ita_tx A07 fake notrim eval"])
    with pytest.raises(CorpusError, match=r":1: unknown label 'fake'"):
        parse_protocol(_cfg("asvspoof2021-la", root))
    (root / "keys/LA/CM/trial_metadata.txt").write_text(
        "LA_0009 LA_E_9332881 alaw ita_tx A07 spoof notrim later\n"
    )
    with pytest.raises(CorpusError, match=r":1: unknown subset 'later'"):
        parse_protocol(_cfg("asvspoof2021-la", root))


def test_missing_audio_is_counted_and_listed(synth_root: Path, tmp_path: Path) -> None:
    proto = tmp_path / "LA" / "ASVspoof2019_LA_cm_protocols" / "ASVspoof2019.LA.cm.dev.trl.txt"
    proto.parent.mkdir(parents=True)
    lines = [f"LA_0001 LA_D_{k:07d} - {'A01 spoof' if k % 2 else '- bonafide'}" for k in range(10)]
    proto.write_text("\n".join(lines) + "\n")
    for k in range(3):
        _write_flac(tmp_path / "LA" / "ASVspoof2019_LA_dev" / "flac" / f"LA_D_{k:07d}.flac")
    cfg = _cfg("asvspoof2019", tmp_path / "LA", split="dev")
    with pytest.raises(
        MissingAudioError, match=r"7 of 10 audio file\(s\).*LA_D_0000003.flac"
    ) as err:
        read_corpus(cfg)
    assert "and 2 more" in str(err.value) and "on_missing=skip" in str(err.value)
    lenient = read_corpus(cfg.model_copy(update={"on_missing": "skip"}))
    assert len(lenient) == 3 and len(lenient.skipped) == 7
    # After a sweep driver's check, trials do not stat every file again; a split that skips
    # missing files still drops the same ones.
    assert len(read_corpus(cfg, check_files=False)) == 10
    trusted = read_corpus(cfg.model_copy(update={"on_missing": "skip"}), check_files=False)
    assert len(trusted) == 3 and len(trusted.skipped) == 7


def test_single_class_and_empty_split(tmp_path: Path) -> None:
    proto = tmp_path / "LA" / "ASVspoof2019_LA_cm_protocols" / "ASVspoof2019.LA.cm.eval.trl.txt"
    proto.parent.mkdir(parents=True)
    proto.write_text("LA_0001 LA_E_0000001 - A07 spoof\n")
    _write_flac(tmp_path / "LA" / "ASVspoof2019_LA_eval" / "flac" / "LA_E_0000001.flac")
    cfg = _cfg("asvspoof2019", tmp_path / "LA", split="eval")
    with pytest.raises(CorpusError, match="has only spoof rows"):
        read_corpus(cfg)
    proto.write_text("\n")
    with pytest.raises(CorpusError, match="has no usable rows"):
        read_corpus(cfg)


def test_duplicate_ids_rejected(tmp_path: Path) -> None:
    proto = tmp_path / "LA" / "ASVspoof2019_LA_cm_protocols" / "ASVspoof2019.LA.cm.eval.trl.txt"
    proto.parent.mkdir(parents=True)
    proto.write_text("LA_0001 LA_E_0000001 - A07 spoof\nLA_0001 LA_E_0000001 - - bonafide\n")
    with pytest.raises(CorpusError, match="'LA_E_0000001' is listed twice"):
        parse_protocol(_cfg("asvspoof2019", tmp_path, split="eval"))


def test_itw_header_and_manifest_label_errors(tmp_path: Path) -> None:
    (tmp_path / "meta.csv").write_text("file,who,label\n0.wav,A,spoof\n")
    with pytest.raises(CorpusError, match=r"meta.csv:1: header .* lacks column\(s\) \['speaker'\]"):
        parse_protocol(_cfg("itw", tmp_path))
    (tmp_path / "dev.csv").write_text("path,label\na.wav,bonafide\nb.wav,fake\n")
    with pytest.raises(CorpusError, match=r"dev.csv:3: unknown label 'fake'"):
        parse_protocol(_cfg("manifest", tmp_path, split="dev"))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "asvspoof2020", "root": "x"}, "asvspoof2019"),
        ({"kind": "asvspoof2019", "root": "x", "split": "test"}, "split 'test'"),
        ({"kind": "asvspoof2021-la", "root": "x", "subset": "private"}, "subset"),
        ({"kind": "itw", "root": "x", "colour": 1}, "colour"),
    ],
)
def test_config_rejects_unknown_kind_split_subset_key(fields: dict, message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        DatasetConfig(**fields)
