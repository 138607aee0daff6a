"""The compatibility report: what of a streamsql file a Spark job cannot do as streamsql does."""

from __future__ import annotations

from dataclasses import dataclass

from streamsql.errors import ProgrammingError


@dataclass(frozen=True)
class Difference:
    """One feature Spark has no equivalent for. `left_out`: the statement is not in the job at
    all (with --allow-differences); otherwise the job runs it, differently, as `why` says."""

    feature: str  # the rule's name, as the README lists it
    where: str  # "sink clicks (line 20)"
    why: str
    left_out: bool = False

    def __str__(self) -> str:
        outcome = "left out of the job" if self.left_out else "exported with this difference"
        return f"{self.where}: {self.why} [{self.feature}; {outcome}]"


class ExportRefused(ProgrammingError):
    """Export refused: the file uses features the Spark job would not honour."""

    def __init__(self, differences: list[Difference]) -> None:
        lines = "\n".join(f"  - {d}" for d in differences)
        super().__init__(
            "The Spark job would not compute what streamsql computes:\n"
            f"{lines}\n"
            "Change the file, or export anyway with --allow-differences (the report then "
            "heads the script)"
        )
        self.differences = differences
