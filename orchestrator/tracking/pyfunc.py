"""A trial's final model folder as an MLflow model, and the pyfunc that runs it.

:func:`make_mlflow_model` adds to a model folder what makes it an MLflow model: ``MLmodel`` (a
``python_function`` flavour, models from code), the code file :data:`CODE` that MLflow runs from
the folder when it loads it, and the environment files MLflow writes. The weights are not
copied: the folder in storage is what the trial's run, the registry and
``mlflow.pyfunc.load_model`` point at. :class:`PyfuncDetector` is
:class:`trainer.detector.Detector` under MLflow's ``PythonModel`` protocol.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow

from trainer.detector import WEIGHTS_AT, Detector
from trainer.evaluate import CONFIG, DECISION

CODE = "mlflow_detector.py"
_CODE_SOURCE = Path(__file__).with_name(CODE)
MLMODEL = "MLmodel"
MLFLOW_FILES = (MLMODEL, CODE, "requirements.txt", "python_env.yaml", "conda.yaml")


@contextlib.contextmanager
def using_store(uri: str) -> Iterator[None]:
    """MLflow's global tracking and registry URIs set to ``uri`` inside the block (what
    ``mlflow.pyfunc.load_model("models:/...")`` reads), and put back after it: MLflow sets them
    in the environment too, where they would outlive the block."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {name: os.environ.get(name) for name in names}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])
        mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _requirements() -> list[str]:
    """What loading the model needs, pinned to what wrote it."""
    pins = []
    for dist in ("supcon-sweep", "torch", "torchaudio", "transformers", "mlflow", "soundfile"):
        try:
            pins.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pins.append(dist)
    return pins


def mlflow_files() -> dict[str, str]:
    """The text files that make a model folder an MLflow model, written by MLflow itself
    (``mlflow.pyfunc.save_model``, models from code) into a scratch folder and read back."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        with warnings.catch_warnings(record=True):  # "add type hints to predict": on purpose
            mlflow.pyfunc.save_model(
                path=str(path), python_model=str(_CODE_SOURCE), pip_requirements=_requirements()
            )
        # MLflow records where the code file came from; loading reads it beside MLmodel
        model = mlflow.models.Model.load(str(path))
        model.flavors["python_function"]["model_code_path"] = CODE
        model.save(str(path / MLMODEL))
        return {name: (path / name).read_text(encoding="utf-8") for name in MLFLOW_FILES}


def make_mlflow_model(folder: Path) -> Path:
    """Make the model ``folder`` an MLflow model (idempotent). Each file is written whole and
    renamed into place, ``MLmodel`` last: a folder with ``MLmodel`` is a complete model."""
    files = mlflow_files()
    for name in sorted(files, key=lambda n: n == MLMODEL):
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(files[name])
        os.replace(tmp, folder / name)
    return folder


def write_pointer(folder: Path, into: Path) -> Path:
    """A pointer model of the MLflow model ``folder`` in ``into``: its MLflow files, config and
    decision, and ``weights_at.txt`` naming ``folder``, without the weights. An MLflow server
    registers a local source only inside the run's artifacts; this goes there (a few kB) while
    the weights stay where the trial wrote them."""
    into.mkdir(parents=True, exist_ok=True)
    for name in (*MLFLOW_FILES, DECISION, CONFIG):
        if (folder / name).is_file():
            (into / name).write_bytes((folder / name).read_bytes())
    (into / WEIGHTS_AT).write_text(f"{folder.resolve()}\n", encoding="utf-8")
    return into


class _Pyfunc(Detector):
    def load_context(self, context: Any = None) -> None:
        self.load()

    def predict(self, context, model_input, params=None):
        """One row per clip: ``score`` (higher = bona fide) and ``bonafide`` (the decision)."""
        return self.frame(model_input)


# predict takes paths, arrays, Series or DataFrames, which MLflow's type-hint validation cannot
# express (list[Any] still warns and refuses a Series); without hints MLflow warns when the
# class is defined, under a "once" filter of its own that no outer filter overrides. The
# warning is recorded here and dropped.
with warnings.catch_warnings(record=True):

    class PyfuncDetector(_Pyfunc, mlflow.pyfunc.PythonModel):
        """:class:`trainer.detector.Detector` as an MLflow pyfunc model."""
