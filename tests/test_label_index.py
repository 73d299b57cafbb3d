"""LabelIndex answers "does any label map match this selector" as testing each map would."""

from __future__ import annotations

import random

from meshpilot.analysis.analyzers.common import LabelIndex, selector_matches

KEYS = ("app", "version", "zone", "tier")
VALUES = ("a", "b", "c")


def _labels(rng: random.Random, most: int) -> dict[str, str]:
    return {k: rng.choice(VALUES) for k in rng.sample(KEYS, rng.randint(0, most))}


def test_any_match_agrees_with_testing_every_map() -> None:
    rng = random.Random(7)
    matched = unmatched = 0
    for _ in range(3000):
        maps = [_labels(rng, 4) for _ in range(rng.randint(0, 6))]
        selector = _labels(rng, 3)
        expected = any(selector_matches(selector, m) for m in maps)
        assert LabelIndex(maps).any_match(selector) == expected, (maps, selector)
        matched += expected
        unmatched += not expected
    assert matched > 300 and unmatched > 300  # both answers were exercised


def test_an_empty_selector_matches_any_map_but_not_none() -> None:
    assert LabelIndex([{}]).any_match({})
    assert not LabelIndex([]).any_match({})
