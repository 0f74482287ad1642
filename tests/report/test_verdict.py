"""The verdict's pre-declared rules, on hand-built evaluations: each tag, its boundaries, and the exact sentences."""

from __future__ import annotations

import math

import pytest

from diffmia.records import Evaluation, Interval, TprAtFpr
from diffmia.report.verdict import (
    LEAK,
    NO_LEAK,
    NOT_MEASURED,
    WEAK_LEAK,
    Control,
    control_strays,
    judge,
    overall,
    tag,
)

NAN = math.nan


def evaluation(auc: float, low: float, high: float, tpr: float = 0.89, n_nonmembers: int = 200) -> Evaluation:
    reason = None if not math.isnan(tpr) else f"target FPR 0.01 is below 1/{n_nonmembers}"
    return Evaluation(
        auc=auc,
        auc_interval=Interval(low, high, 0.95),
        tpr_at_fpr=(
            TprAtFpr(0.01, tpr, 0.01 if not math.isnan(tpr) else NAN, 1.5, Interval(NAN, NAN, 0.95), reason),
            TprAtFpr(0.001, 0.5, 0.0, 2.0, Interval(NAN, NAN, 0.95)),
        ),
        n_members=200,
        n_nonmembers=n_nonmembers,
        n_bootstrap=200,
        seed=0,
    )


CHANCE = (
    Control("base model (combined classifier)", evaluation(0.52, 0.41, 0.63)),
    Control("blind classifier (query images alone)", evaluation(0.48, 0.37, 0.59)),
)


@pytest.mark.parametrize(
    ("auc", "low", "high", "expected"),
    [
        (0.995, 0.988, 0.999, LEAK),
        (0.8, 0.7, 0.9, LEAK),  # AUC at the boundary 0.8: a leak
        (0.7999, 0.7, 0.9, WEAK_LEAK),
        (0.65, 0.51, 0.78, WEAK_LEAK),
        (0.85, 0.5, 0.95, NO_LEAK),  # an interval touching 0.5 includes it
        (0.55, 0.45, 0.65, NO_LEAK),
        (0.3, 0.2, 0.4, NO_LEAK),  # below chance: no leak measured
        (NAN, NAN, NAN, NOT_MEASURED),
    ],
)
def test_tags_follow_the_declared_rules(auc, low, high, expected):
    assert tag(evaluation(auc, low, high)) == expected


def test_no_headline_set_is_not_measured():
    assert tag(None) == NOT_MEASURED
    verdict = judge("II", None, [])
    assert verdict.colour == "grey"
    assert verdict.sentence == (
        "Scenario II (image only, half of D\u2032 real members): not measured — the run holds no headline score set "
        "for it."
    )


def test_leak_sentence():
    verdict = judge("I", evaluation(0.995, 0.988, 0.999), CHANCE)
    assert (verdict.tag, verdict.colour, verdict.strays) == (LEAK, "red", ())
    assert verdict.sentence == (
        "Scenario I (image + caption, half of D\u2032 real members): members are identified — 89% "
        "of members at 1% false-positive rate (AUC 0.995 [0.988, 0.999]); controls at chance."
    )


def test_weak_leak_sentence():
    verdict = judge("III", evaluation(0.65, 0.51, 0.78, tpr=0.025), CHANCE)
    assert (verdict.tag, verdict.colour) == (WEAK_LEAK, "amber")
    assert verdict.sentence == (
        "Scenario III (image + caption, D\u2032 disjoint): members are weakly identified — 2.5% of "
        "members at 1% false-positive rate (AUC 0.650 [0.510, 0.780]); controls at chance."
    )


def test_no_leak_sentence_with_an_interval_touching_chance():
    verdict = judge("IV", evaluation(0.85, 0.5, 0.95, tpr=0.0), CHANCE)
    assert (verdict.tag, verdict.colour) == (NO_LEAK, "green")
    assert verdict.sentence == (
        "Scenario IV (image only, D\u2032 disjoint): no membership leak measured — 0% of members "
        "at 1% false-positive rate (AUC 0.850 [0.500, 0.950]); controls at chance."
    )


def test_undefined_tpr_says_how_many_nonmembers_could_not_resolve_it():
    verdict = judge("I", evaluation(0.98, 0.947, 1.0, tpr=NAN, n_nonmembers=20), CHANCE)
    assert verdict.sentence == (
        "Scenario I (image + caption, half of D\u2032 real members): members are identified — TPR "
        "at 1% FPR not resolved with 20 non-members (AUC 0.980 [0.947, 1.000]); controls at "
        "chance."
    )


@pytest.mark.parametrize(
    ("auc", "low", "high", "strays"),
    [
        (0.7, 0.61, 0.79, True),
        (0.3, 0.2, 0.4, True),  # below chance strays too
        (0.7, 0.5, 0.8, False),  # interval touching 0.5
        (0.6, 0.55, 0.65, False),  # within 0.5 +/- 0.1
        (0.61, 0.55, 0.65, True),
        (NAN, NAN, NAN, False),
    ],
)
def test_control_strays_by_the_warning_rule(auc, low, high, strays):
    assert control_strays(evaluation(auc, low, high)) is strays


def test_a_straying_control_is_named_and_keeps_the_tag():
    controls = (CHANCE[0], Control("blind classifier (query images alone)", evaluation(0.7, 0.61, 0.79)))
    verdict = judge("II", evaluation(0.9, 0.85, 0.95, tpr=0.4), controls)
    assert verdict.tag == LEAK and [c.name for c in verdict.strays] == ["blind classifier (query images alone)"]
    assert verdict.sentence == (
        "Scenario II (image only, half of D\u2032 real members): members are identified — 40% of members at 1% "
        "false-positive rate (AUC 0.900 [0.850, 0.950]); but a control strays (blind classifier (query images "
        "alone) AUC 0.700 [0.610, 0.790]): the member/non-member split itself may be separable."
    )
    assert overall([verdict]) == "Of 1 scenario, 1 leaks (II); controls stray in II, so read those with care."


def test_overall_line_counts_every_tag():
    verdicts = [
        judge("I", evaluation(0.99, 0.98, 1.0), CHANCE),
        judge("II", evaluation(0.95, 0.9, 0.99), CHANCE),
        judge("III", evaluation(0.65, 0.51, 0.78), CHANCE),
        judge("IV", evaluation(0.5, 0.4, 0.6), CHANCE),
    ]
    assert overall(verdicts) == (
        "Of 4 scenarios, 2 leak (I, II), 1 leaks weakly (III) and 1 shows no measured leak "
        "(IV); headline controls at chance in every scenario."
    )
    assert overall([judge("I", evaluation(0.5, 0.4, 0.6), [])]) == (
        "Of 1 scenario, 1 shows no measured leak (I); no controls were run."
    )
    assert judge("I", evaluation(0.5, 0.4, 0.6), []).sentence.endswith("; no controls were run.")
