import os

import pytest
from hypothesis import HealthCheck, settings

# CI runs on 2 cores: a moderate number of examples per property, no deadline (shared machine).
settings.register_profile("ci", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed_torch():
    import torch

    torch.manual_seed(0)
