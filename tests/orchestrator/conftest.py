"""One isolated local Ray instance for every orchestrator test that needs one (starting Ray
costs 5-15 s), in token-auth mode like a real cluster."""

from __future__ import annotations

import pytest

from tests.helpers import use_ray_token_auth

use_ray_token_auth()


@pytest.fixture(scope="session")
def ray_session():
    import ray

    # address="local" ignores RAY_ADDRESS and stale cluster files: never joins another Ray.
    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",
        num_cpus=2,
        resources={"TRAIN_DRIVER": 2},
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()
