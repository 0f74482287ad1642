"""The four attack scenarios: does the attacker know the query's caption, and does the auxiliary set D' overlap
the target's real fine-tuning set?

| scenario | query           | D' vs the target's members | prompt                     |
|----------|-----------------|----------------------------|----------------------------|
| I        | image + caption | half of D' are real members | the given caption          |
| II       | image only      | half of D' are real members | captioner fine-tuned on D' |
| III      | image + caption | disjoint                    | the given caption          |
| IV       | image only      | disjoint                    | captioner fine-tuned on D' |
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("overlap", "disjoint")  # how D' relates to the target's members, in the order D' sets are drawn


@dataclass(frozen=True)
class Scenario:
    """One scenario: ``caption`` is where its prompts come from ("given" or "captioner"), ``kind`` how its D'
    relates to the target's members ("overlap" or "disjoint")."""

    name: str
    caption: str
    kind: str

    @property
    def given_caption(self) -> bool:
        return self.caption == "given"

    @property
    def prompt_source(self) -> str:
        """The prompts the scenario queries with: "given", or "captioner-<kind>" (the captioner of its D')."""
        return "given" if self.given_caption else f"captioner-{self.kind}"

    @property
    def description(self) -> str:
        query = "image + caption" if self.given_caption else "image only"
        aux = "half of D\u2032 real members" if self.kind == "overlap" else "D\u2032 disjoint"
        return f"{query}, {aux}"


SCENARIOS: dict[str, Scenario] = {
    "I": Scenario("I", "given", "overlap"),
    "II": Scenario("II", "captioner", "overlap"),
    "III": Scenario("III", "given", "disjoint"),
    "IV": Scenario("IV", "captioner", "disjoint"),
}


def source_name(source: str) -> str:
    """A prompt source in words, for logs: "given caption" or "captioner on D' overlap"."""
    return "given caption" if source == "given" else source.replace("-", " on D' ")
