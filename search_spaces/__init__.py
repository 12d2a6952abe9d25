"""Search spaces (YAML keyed by trainer config paths) and their conversion to Tune domains."""
