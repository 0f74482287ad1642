"""Stage 7 of an audit: the attacks, fitted on each scenario's pooled shadow features only, frozen, and applied once
to the target and the controls, per channel and on all channels together; the shadow-free baselines' scores and the
blind control beside them. Each scenario's headline (channel, attack) is chosen by a rule over the shadow data
(out-of-fold on the shadows) before the target is scored."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from diffmia.attacks import MembershipAttack, ShadowValidation, cross_validate, fit_attacks, score_with
from diffmia.attacks.baselines import BASELINES
from diffmia.attacks.threshold import REDUCTIONS
from diffmia.audit.measure import Measurements, ScenarioMeasures, pool_tables
from diffmia.config import Config
from diffmia.errors import DataError
from diffmia.names import COMBINED, NO_CHANNEL, WEIGHTS, Role, channel_of
from diffmia.records import FeatureTable, FloatArray, ScoreSet
from diffmia.results import fixed_headline

Validation = dict[tuple[str, str], ShadowValidation]  # (channel, attack) -> its out-of-fold shadow performance


@dataclass(frozen=True)
class Scores:
    """Every score set of the run in report order, each scenario's headline (channel, attack), and the shadow
    validation it was chosen by."""

    score_sets: tuple[ScoreSet, ...]
    headline: dict[str, tuple[str, str]]
    validation: dict[str, Validation]


def score(config: Config, measured: Measurements) -> Scores:
    """Fit, freeze and apply every scenario's attacks; choose each scenario's headline on its shadows."""
    sets: list[ScoreSet] = []
    headline, validation = {}, {}
    for measures in measured.scenarios:
        name = measures.scenario.name
        scenario_sets, validation[name] = score_scenario(config, measures)
        sets += scenario_sets
        headline[name] = choose_headline(config, validation[name])
    order = _order(config, [m.scenario.name for m in measured.scenarios])
    return Scores(tuple(sorted(sets, key=order)), headline, validation)


def score_scenario(config: Config, measures: ScenarioMeasures) -> tuple[list[ScoreSet], Validation]:
    """One scenario: attacks fitted on its shadows' pooled features, per channel and on all channels together,
    scored on the target and the base model; the shadow-free baselines; the blind control. With the headline rule
    "shadow", each attack is first cross-validated on the shadow data (what the headline is chosen by)."""
    scenario, sets = measures.scenario.name, []
    validation: Validation = {}
    shadow = pool_tables(measures.shadows)
    for channel, names in channel_sets(shadow.names, config.generation.query_channels()).items():
        attacks, table = channel_attacks(config, names), shadow.select(names)
        if config.attacks.headline == "shadow":
            checked = cross_validate(
                attacks,
                table,
                groups=measures.groups,
                folds=config.attacks.headline_folds,
                seed=config.audit.seed,
                fpr=config.attacks.headline_fpr,
            )
            validation |= {(channel, name): v for name, v in checked.items()}
        fitted = fit_attacks(attacks, table)
        for role, scored in measures.tables.items():
            for name, scores in score_with(fitted, names, scored.select(names)).items():
                sets.append(_score_set(config, scenario, role, channel, name, scored, scores))
    target = measures.tables[Role.TARGET]
    for (name, role), scores in measures.baselines.items():
        sets.append(_score_set(config, scenario, role, BASELINES[name].evidence, name, target, scores))
    if measures.blind is not None:
        blind_shadow, blind_target = measures.blind
        fitted = fit_attacks({"classifier": config.attacks.classifier.build()}, blind_shadow)
        for name, scores in score_with(fitted, blind_shadow.names, blind_target).items():
            sets.append(_score_set(config, scenario, Role.BLIND, NO_CHANNEL, name, blind_target, scores))
    return sets, validation


def choose_headline(config: Config, validation: Validation) -> tuple[str, str]:
    """A scenario's headline (channel, attack) by the configured rule: the best out-of-fold shadow TPR at the
    headline FPR (AUC breaks ties, then the order the attacks were fitted in), or the fixed rule."""
    if config.attacks.headline == "fixed" or not validation:
        return fixed_headline(config.generation.query_channels(), _attacks(config))

    def merit(key: tuple[str, str]) -> tuple[float, float]:  # a TPR the shadows cannot resolve (NaN) ranks last
        v = validation[key]
        return (v.tpr if np.isfinite(v.tpr) else -1.0, v.auc)

    return max(validation, key=merit)  # the first of equals


def channel_sets(names: Sequence[str], channels: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The feature columns of each channel alone, and of all channels together when there are several."""
    sets = {c: tuple(n for n in names if channel_of(n)[0] == c) for c in dict.fromkeys(channels)}
    if len(sets) > 1:
        sets[COMBINED] = tuple(names)
    return sets


def channel_attacks(config: Config, names: Sequence[str]) -> dict[str, MembershipAttack]:
    """The configured attacks for a table of the columns ``names``: a threshold attack on a named feature takes
    that feature's column in each channel of the table (their mean where there are several)."""
    attacks = config.attacks.build()
    reduce = config.attacks.threshold.reduce
    if "threshold" in attacks and isinstance(reduce, str) and reduce not in REDUCTIONS:
        attacks["threshold"].set_params(reduce=[n for n in names if channel_of(n)[1] == reduce])
    return attacks


def _score_set(
    config: Config, scenario: str, model: str, channel: str, attack: str, table: FeatureTable, scores: FloatArray
) -> ScoreSet:
    if table.y is None:
        raise DataError(f"the {model} table of scenario {scenario} has no membership labels to evaluate")
    evaluation = config.evaluation.evaluate(scores, table.y, threshold=0.0)
    return ScoreSet(scenario, str(model), str(channel), attack, table.sample_ids, scores, table.y, evaluation)


def _attacks(config: Config) -> list[str]:
    """Every attack the run scores, in the configured order: the shadow-fitted ones, then the baselines."""
    return [*config.attacks.use, *config.audit.baselines]


def _order(config: Config, scenarios: Sequence[str]) -> Callable[[ScoreSet], tuple[int, int, int, int]]:
    """Score sets by scenario, model (target, then the controls), channel, then attack, as configured."""
    roles = list(Role)
    channel_order = [*config.generation.query_channels(), COMBINED, WEIGHTS, NO_CHANNEL]
    attack_order = _attacks(config)
    return lambda s: (
        list(scenarios).index(s.scenario),
        roles.index(Role(s.model)),
        channel_order.index(s.channel),
        attack_order.index(s.attack) if s.model != Role.BLIND else 0,
    )
