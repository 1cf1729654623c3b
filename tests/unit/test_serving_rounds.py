"""bench_serving's side-by-side ratio: each mode's p50 over the first mode's, per round, and the median."""

from bench.bench_serving import p50_ratios


def test_ratios_pair_modes_within_each_round() -> None:
    rounds: list[dict[str, object]] = [
        {"fused@25rps": {"p50": 6.0}, "graph@25rps": {"p50": 9.0}},  # 1.5
        {"fused@25rps": {"p50": 10.0}, "graph@25rps": {"p50": 12.0}},  # 1.2: a slow round for both
        {"fused@25rps": {"p50": 5.0}, "graph@25rps": {"p50": 9.0}},  # 1.8
    ]
    got = p50_ratios(rounds, ["fused", "graph"], [25])
    assert got == {"graph/fused@25rps": {"per_round": [1.5, 1.2, 1.8], "median": 1.5}}


def test_a_round_missing_a_mode_is_skipped() -> None:
    rounds: list[dict[str, object]] = [
        {"fused@25rps": {"p50": 4.0}, "graph@25rps": {"p50": 5.0}},
        {"fused@25rps": {"p50": 4.0}},  # the graph app never came up
    ]
    assert p50_ratios(rounds, ["fused", "graph"], [25])["graph/fused@25rps"] == {"per_round": [1.25], "median": 1.25}
