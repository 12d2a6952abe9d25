"""Corpus readers, audio pipeline, augmentation, sampling and the synthetic corpus."""
