import subprocess
import sys

import pytest
from pydantic import ValidationError

from serving.experiments import Experiment, Variant, assign


def _experiment() -> Experiment:
    return Experiment(
        name="ranker-v2", variants=[Variant(name="control", weight=1), Variant(name="treatment", weight=3)]
    )


def test_assignment_follows_weights() -> None:
    exp = _experiment()
    counts = {"control": 0, "treatment": 0}
    for u in range(20_000):
        counts[assign(exp, f"user-{u}").name] += 1
    assert abs(counts["treatment"] / 20_000 - 0.75) < 0.02


def test_assignment_is_stable_across_processes() -> None:
    # Python's str hash is salted per process; a new interpreter must give the same variants.
    code = (
        "from serving.experiments import Experiment, Variant, assign;"
        "e = Experiment(name='ranker-v2', "
        "variants=[Variant(name='control', weight=1), Variant(name='treatment', weight=3)]);"
        "print(','.join(assign(e, f'user-{u}').name for u in range(200)))"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    here = ",".join(assign(_experiment(), f"user-{u}").name for u in range(200))
    assert other == here


def test_duplicate_variant_names_are_refused() -> None:
    with pytest.raises(ValidationError, match="unique"):
        Experiment(name="x", variants=[Variant(name="a", weight=1), Variant(name="a", weight=1)])


def test_wilson_interval_contains_the_rate_and_narrows_with_more_data() -> None:
    from serving.experiments import wilson

    lo_small, hi_small = wilson(5, 50)
    lo_big, hi_big = wilson(500, 5000)
    assert lo_small < 0.1 < hi_small and lo_big < 0.1 < hi_big
    assert hi_big - lo_big < (hi_small - lo_small) / 3
    assert wilson(0, 20)[0] == 0.0 and 0 < wilson(0, 20)[1] < 0.2
    assert wilson(0, 0) == (0.0, 0.0)
