"""The options the ``personagpt auth`` commands share (declared once, as in :mod:`personagpt.cli.options`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from personagpt.cli.common import UserError

TurnsOpt = Annotated[int, typer.Option(min=1, help="Exchanges per interview.")]
# -K, not -k: -k is --top-k in every generating command
KOpt = Annotated[int, typer.Option("-K", "--candidates", min=2, help="Candidate personas (true + distractors).")]
MaxNewOpt = Annotated[int, typer.Option("--max-new-tokens", min=1, help="Longest turn.")]
SeedOpt = Annotated[int, typer.Option(help="Seed for personas, distractors and sampling.")]
IdentifierOpt = Annotated[Optional[Path], typer.Option(
    "--identifier", help="Embedding identifier head (default: the one shipped for the bundled model; "
                         "`auth train-identifier` makes one for another model).")]
ThresholdsOpt = Annotated[Optional[Path], typer.Option(
    help="thresholds.json from `auth train` (default: the shipped one): the accept threshold per turn.")]
GuideOpt = Annotated[str, typer.Option(
    help="The identifier the policy sees and is rewarded by: sentence (persona facts against the answers under a "
         "sentence encoder; no training), exchange (the same, also reading a yes or no with the question it answers), "
         "calibrated (exchange, a yes or no weighed by how often the partner gives it) or embedding (the trained head "
         "over the dialogue model's hidden states).")]
PolicyPathOpt = Annotated[Optional[Path], typer.Option(
    "--policy-path", help="Learned policy (policy.pt from `auth train`; default: the one shipped, if any).")]
DistilledOpt = Annotated[Optional[Path], typer.Option(
    "--distilled", help="Distilled question policy (distilled.pt from `auth distill`; default: the one shipped, "
                        "if any).")]
WorkersOpt = Annotated[int, typer.Option(min=1, help="Interviews run side by side.")]
PartnerOpt = Annotated[int, typer.Option(
    "--partner-candidates", min=1, help="The partner answers best-of-N, as the chat does by default with 4 (it then "
                                        "seldom denies a fact of its persona it is asked about); 1: one sample.")]
DecodingOpt = Annotated[str, typer.Option(
    help="exact: fp32 decoding, where a reply depends on its seed and prompt alone, so that two policies' "
         "interviews differ only where the policies do (paired comparisons need it); fast: the quickest path for "
         "this CPU, whose rounding follows whatever else is in the batch.")]
FalseAcceptOpt = Annotated[float, typer.Option(min=0.0, max=1.0, help="False-accept rate the threshold is "
                                                                      "calibrated for.")]


def checked_guide(name: str) -> str:
    """``--guide``, or a clear error naming the identifiers there are."""
    from personagpt.auth.commands import GUIDES

    if name not in GUIDES:
        raise UserError(f"--guide must be one of {', '.join(GUIDES)}")
    return name


def checked_decoding(name: str) -> str:
    """``--decoding``, or a clear error naming the ways there are."""
    from personagpt.auth.interview import SelfPlay

    if name not in SelfPlay.DECODING:
        raise UserError(f"--decoding must be one of {', '.join(SelfPlay.DECODING)}")
    return name
