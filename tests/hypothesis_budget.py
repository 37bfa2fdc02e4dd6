"""How many examples a property test with its own count draws: that count under the default ("ci") profile,
scaled by the loaded profile's max_examples against ci's 60 (so ``make fuzz``, 1000 per test, multiplies every
count by 1000/60 instead of leaving the tests that set their own at the CI count)."""

from hypothesis import settings

CI_MAX_EXAMPLES = 60


def examples(n: int) -> int:
    """``n`` under the CI profile, proportionally more under a larger one (never fewer)."""
    return max(n, round(n * settings.default.max_examples / CI_MAX_EXAMPLES))
