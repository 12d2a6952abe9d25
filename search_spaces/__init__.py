"""Search spaces (YAML keyed by trainer config paths) and their conversion to Tune domains."""

from search_spaces.space import (
    SPACES_DIR,
    Param,
    SearchSpace,
    SpaceError,
    load_space,
    shipped_spaces,
)

__all__ = [
    "SPACES_DIR",
    "Param",
    "SearchSpace",
    "SpaceError",
    "load_space",
    "shipped_spaces",
]
