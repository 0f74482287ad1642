"""The four attack scenarios: does the attacker know the query's caption, and does the auxiliary set D' overlap
the target's real fine-tuning set?

| scenario | query           | D' vs the target's members | prompt                     |
|----------|-----------------|----------------------------|----------------------------|
| I        | image + caption | half of D' are real members | the given caption          |
| II       | image only      | half of D' are real members | captioner fine-tuned on D' |
| III      | image + caption | disjoint                    | the given caption          |
| IV       | image only      | disjoint                    | captioner fine-tuned on D' |

:data:`SCENARIOS` is the registry of scenarios: the configuration accepts exactly its names.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffmia.names import PromptSource, Relation
from diffmia.registry import Registry


@dataclass(frozen=True)
class Scenario:
    """One scenario: whether its queries carry the given caption (else the captioner's, fine-tuned on its D'), and
    how its D' relates to the target's members."""

    name: str
    given_caption: bool
    relation: Relation

    @property
    def prompt_source(self) -> PromptSource:
        """The prompts the scenario queries with: the given captions, or those of the captioner of its D'."""
        return PromptSource.GIVEN if self.given_caption else PromptSource.captioner(self.relation)

    @property
    def description(self) -> str:
        query = "image + caption" if self.given_caption else "image only"
        aux = "half of D\u2032 real members" if self.relation is Relation.OVERLAP else "D\u2032 disjoint"
        return f"{query}, {aux}"


SCENARIOS: Registry[Scenario] = Registry(
    "scenario",
    {
        "I": Scenario("I", True, Relation.OVERLAP),
        "II": Scenario("II", False, Relation.OVERLAP),
        "III": Scenario("III", True, Relation.DISJOINT),
        "IV": Scenario("IV", False, Relation.DISJOINT),
    },
)
