"""Ray Tune + Optuna sweeps over Ray Train trials of :mod:`trainer`, tracked in MLflow."""
