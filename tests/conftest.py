import os

import pytest
from hypothesis import HealthCheck, settings

# CI runs on 2 cores: a moderate number of examples per property, no deadline (shared machine). The examples are
# derandomized (a fixed sequence per test): whether a commit lands must not depend on the draw. Exploring is the
# "thorough" profile's job: 1000 fresh examples per property on each run (pin one with --hypothesis-seed), and
# whatever it finds joins the suite as an explicit @example or a corrected bound.
settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed_torch():
    import torch

    torch.manual_seed(0)


def pytest_collection_modifyitems(items):
    """Every Hypothesis test is a ``property`` test, marked or not, so that ``-m property`` (and ``make fuzz``)
    runs them all."""
    from hypothesis import is_hypothesis_test

    for item in items:
        if is_hypothesis_test(getattr(item, "obj", None)):
            item.add_marker(pytest.mark.property)
