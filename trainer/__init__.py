"""Two-stage XLS-R supervised-contrastive deepfake-audio detector.

Plain PyTorch + transformers + torchaudio: nothing here imports Ray, Optuna or MLflow.
"""
