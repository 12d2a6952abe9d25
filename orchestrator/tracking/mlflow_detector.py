"""MLflow's entry to a supcon-sweep model folder (models from code).

MLflow copies this file into every final model folder and runs it from there when the model is
loaded; the detector then reads the weights beside it (or where a pointer model names). Never
imported by the package itself.
"""

from pathlib import Path

import mlflow

from orchestrator.tracking.pyfunc import PyfuncDetector

mlflow.models.set_model(PyfuncDetector(Path(__file__).resolve().parent))
