"""The verdict of a run: one tag and one sentence per scenario, by rules declared here before any run.

The rules read the scenario's headline score set on the target (chosen before the target was scored, by the rule
the run records) and its controls (the un-fine-tuned base model queried the same way, and the
blind classifier on the query images alone):

- **leak** (red): AUC >= :data:`LEAK_AUC` (0.8) and the AUC's interval lies above :data:`CHANCE` (0.5);
- **weak leak** (amber): the AUC's interval lies above 0.5 but AUC < 0.8;
- **no leak measured** (green): the AUC's interval includes 0.5 (a bound at exactly 0.5 included), or lies below;
- **not measured** (grey): the scenario has no headline score set, or its AUC is undefined.

A control **strays** (:func:`control_strays`, the same rule the audit warns by) when its AUC is more than
:data:`CONTROL_MARGIN` (0.1) from 0.5 and its interval excludes 0.5; the controls are "at chance" when none strays.
A straying control does not change the tag: the sentence says which control strays, since then the member /
non-member split itself may be separable and the target's numbers overstate what membership alone explains.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from diffmia.names import Relation
from diffmia.records import Evaluation, ScoreSet
from diffmia.report.content import number
from diffmia.results import RunResult
from diffmia.scenarios import SCENARIOS

LEAK_AUC = 0.8
CHANCE = 0.5
CONTROL_MARGIN = 0.1

LEAK = "leak"
WEAK_LEAK = "weak leak"
NO_LEAK = "no leak measured"
NOT_MEASURED = "not measured"
COLOURS = {LEAK: "red", WEAK_LEAK: "amber", NO_LEAK: "green", NOT_MEASURED: "grey"}
RULES: tuple[tuple[str, str], ...] = (
    (LEAK, f"AUC >= {LEAK_AUC:g} and the AUC's interval lies above {CHANCE:g}"),
    (WEAK_LEAK, f"the AUC's interval lies above {CHANCE:g}, but AUC < {LEAK_AUC:g}"),
    (NO_LEAK, f"the AUC's interval includes {CHANCE:g} (a bound at exactly {CHANCE:g} included) or lies below it"),
    (NOT_MEASURED, "the scenario has no headline score set, or its AUC is undefined"),
)
CONTROL_RULE = (
    f"a control (base model, blind classifier) strays when its AUC is more than {CONTROL_MARGIN:g} from {CHANCE:g} "
    f"and its interval excludes {CHANCE:g}; controls are at chance when none strays. A straying control leaves the "
    "tag as it is, but means the member / non-member split itself may be separable"
)


def control_strays(evaluation: Evaluation) -> bool:
    """Whether a control's scores separate members from non-members: AUC more than :data:`CONTROL_MARGIN` from
    0.5 and an interval that excludes 0.5 (an undefined AUC never strays)."""
    interval = evaluation.auc_interval
    return abs(evaluation.auc - CHANCE) > CONTROL_MARGIN and not interval.low <= CHANCE <= interval.high


def tag(evaluation: Evaluation | None) -> str:
    """The tag of a headline evaluation by :data:`RULES`."""
    if evaluation is None or math.isnan(evaluation.auc):
        return NOT_MEASURED
    if evaluation.auc_interval.low > CHANCE:
        return LEAK if evaluation.auc >= LEAK_AUC else WEAK_LEAK
    return NO_LEAK


@dataclass(frozen=True)
class Control:
    """A control score set as the verdict names it."""

    name: str
    evaluation: Evaluation


@dataclass(frozen=True)
class Verdict:
    """One scenario's tag and sentence, with what they were read from."""

    scenario: str
    description: str
    tag: str
    channel: str
    attack: str
    evaluation: Evaluation | None
    controls: tuple[Control, ...]
    sentence: str

    @property
    def colour(self) -> str:
        return COLOURS[self.tag]

    @property
    def strays(self) -> tuple[Control, ...]:
        return tuple(c for c in self.controls if control_strays(c.evaluation))


@dataclass(frozen=True)
class Verdicts:
    """The verdict block of a run: one line overall, a verdict per scenario, the counts and the query budget."""

    overall: str
    scenarios: tuple[Verdict, ...]
    members: int
    nonmembers: int
    queries_per_image: int
    channels: tuple[str, ...]

    @property
    def budget(self) -> str:
        plural = "" if self.queries_per_image == 1 else "s"
        return (
            f"{self.members} members and {self.nonmembers} non-members; query budget: {self.queries_per_image} "
            f"generation{plural} per image and channel ({', '.join(self.channels)})"
        )


def percent(value: float) -> str:
    """0.89 -> "89%", 0.995 -> "99.5%", 0.001 -> "0.1%"."""
    text = f"{value * 100:.1f}".rstrip("0").rstrip(".")
    return f"{text}%"


def auc_text(evaluation: Evaluation) -> str:
    """ "AUC 0.995 [0.988, 0.999]"."""
    interval = evaluation.auc_interval
    return f"AUC {number(evaluation.auc)} [{number(interval.low)}, {number(interval.high)}]"


def _tpr_text(evaluation: Evaluation) -> str:
    if not evaluation.tpr_at_fpr:
        return ""
    first = evaluation.tpr_at_fpr[0]
    if math.isnan(first.tpr):
        return f"TPR at {percent(first.target_fpr)} FPR not resolved with {evaluation.n_nonmembers} non-members"
    return f"{percent(first.tpr)} of members at {percent(first.target_fpr)} false-positive rate"


def _controls_text(controls: Sequence[Control]) -> str:
    if not controls:
        return "no controls were run"
    strays = [c for c in controls if control_strays(c.evaluation)]
    if not strays:
        return "controls at chance"
    which = "; ".join(f"{c.name} {auc_text(c.evaluation)}" for c in strays)
    subject = "a control strays" if len(strays) == 1 else "controls stray"
    return f"but {subject} ({which}): the member/non-member split itself may be separable"


def judge(
    scenario: str, evaluation: Evaluation | None, controls: Sequence[Control], *, channel: str = "", attack: str = ""
) -> Verdict:
    """The verdict of one scenario from its headline evaluation on the target and its controls."""
    description = SCENARIOS[scenario].description if scenario in SCENARIOS else ""
    head = f"Scenario {scenario}" + (f" ({description})" if description else "")
    found = tag(evaluation)
    if evaluation is None:
        sentence = f"{head}: not measured — the run holds no headline score set for it."
    elif found == NOT_MEASURED:
        counts = f"{evaluation.n_members} members, {evaluation.n_nonmembers} non-members"
        sentence = f"{head}: not measured — the AUC is undefined ({counts})."
    else:
        finding = {
            LEAK: "members are identified",
            WEAK_LEAK: "members are weakly identified",
            NO_LEAK: "no membership leak measured",
        }[found]
        tpr = _tpr_text(evaluation)
        figures = f"{tpr} ({auc_text(evaluation)})" if tpr else auc_text(evaluation)
        sentence = f"{head}: {finding} — {figures}; {_controls_text(controls)}."
    return Verdict(scenario, description, found, channel, attack, evaluation, tuple(controls), sentence)


def control_name(score_set: ScoreSet) -> str:
    """How a control is named: "base model (combined classifier)", "blind classifier (query images alone)"."""
    if score_set.model == "base":
        return f"base model ({score_set.channel} {score_set.attack})"
    if score_set.model == "blind":
        return f"blind {score_set.attack} (query images alone)"
    return f"{score_set.model} ({score_set.channel} {score_set.attack})"


def overall(verdicts: Sequence[Verdict]) -> str:
    """One line over all scenarios: "Of 4 scenarios, 2 leak (I, II) and 2 show no measured leak (III, IV); ..."."""
    n = len(verdicts)
    if not n:
        return "The run holds no scenario."
    verbs = {
        LEAK: ("leaks", "leak"),
        WEAK_LEAK: ("leaks weakly", "leak weakly"),
        NO_LEAK: ("shows no measured leak", "show no measured leak"),
        NOT_MEASURED: ("is not measured", "are not measured"),
    }
    parts = []
    for key, (one, many) in verbs.items():
        named = [v.scenario for v in verdicts if v.tag == key]
        if named:
            parts.append(f"{len(named)} {one if len(named) == 1 else many} ({', '.join(named)})")
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    straying = [v.scenario for v in verdicts if v.strays]
    if straying:
        controls = f"controls stray in {', '.join(straying)}, so read those with care"
    elif any(v.controls for v in verdicts):
        controls = "headline controls at chance in every scenario"
    else:
        controls = "no controls were run"
    return f"Of {n} scenario{'' if n == 1 else 's'}, {listed}; {controls}."


def verdicts(run: RunResult) -> Verdicts:
    """The verdict block of ``run``: every scenario by :data:`RULES`, in the run's scenario order."""
    found = []
    for scenario in run.scenarios:
        channel, attack = run.headline.get(scenario, ("", ""))
        target = run.headline_set(scenario) if scenario in run.headline else None
        controls = [Control(control_name(s), s.evaluation) for s in run.controls(scenario)] if target else []
        found.append(
            judge(scenario, None if target is None else target.evaluation, controls, channel=channel, attack=attack)
        )
    return Verdicts(
        overall(found), tuple(found), run.data.members, run.data.nonmembers, run.queries_per_image, run.channels
    )


def control_warnings(score_sets: Sequence[ScoreSet]) -> list[str]:
    """Controls that should sit near AUC 0.5 but do not (:func:`diffmia.report.verdict.control_strays`): the
    member / non-member split itself may be separable."""
    warnings = []
    for model, what in (("base", "the un-fine-tuned base model"), ("blind", "the query images alone (blind)")):
        strays = [s for s in score_sets if s.model == model and control_strays(s.evaluation)]
        if not strays:
            continue
        flagged = [
            f"{s.scenario}/{s.channel}/{s.attack} {s.evaluation.auc:.3f} "
            f"[{s.evaluation.auc_interval.low:.3f}, {s.evaluation.auc_interval.high:.3f}]"
            for s in strays
        ]
        # a captioner fine-tuned on an overlapping D' has seen part of the target's members: their prompts may be
        # better, and a prompt carries membership into any model's generations (scenario II)
        seen = sorted(
            {
                s.scenario
                for s in strays
                if not SCENARIOS[s.scenario].given_caption and SCENARIOS[s.scenario].relation == Relation.OVERLAP
            }
        )
        why = (
            "Members and non-members may differ in distribution, so the target's numbers overstate what "
            "membership alone explains"
        )
        captioner = (
            f"the captioner of scenario {', '.join(seen)} was fine-tuned on a D' that holds part of the "
            "target's members and may caption them better, so its prompts carry membership into any "
            f"model's generations: the target's {', '.join(seen)} numbers overstate what the target itself "
            "leaks (compare with the disjoint scenarios, whose captioner never saw them)"
        )
        if model == "base" and len(seen) == len({s.scenario for s in strays}):
            why = captioner[0].upper() + captioner[1:]
        elif model == "base" and seen:
            why += f"; and {captioner}"
        warnings.append(
            f"attacks on {what} separate members from non-members (AUC outside 0.5 +/- 0.1, interval "
            f"excluding 0.5): {'; '.join(flagged)}. {why}"
        )
    return warnings
