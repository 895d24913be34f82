"""What a rollout of one prompt returns to VAS: accuracy outcomes and response token ids."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class RolloutOutcomes:
    """The N rollouts of one prompt.

    Fields:
        accuracies: N accuracy outcomes in [0, 1] (the verifier's accuracy, not the format reward); NaN marks
            an outcome the verifier could not decide (see VASConfig.nan_accuracy).
        response_ids: N responses as token-id sequences (lists of ints or 1-D int arrays, possibly empty).
    """

    accuracies: Sequence[float]
    response_ids: Sequence[Sequence[int]]

    def __post_init__(self) -> None:
        if len(self.accuracies) != len(self.response_ids):
            raise ValueError(
                f"RolloutOutcomes has {len(self.accuracies)} accuracies but {len(self.response_ids)} responses: "
                "give one accuracy per response"
            )
        acc = np.asarray(self.accuracies, dtype=np.float64)
        finite = acc[~np.isnan(acc)]
        if np.any((finite < 0) | (finite > 1)):
            raise ValueError(
                f"RolloutOutcomes accuracies must lie in [0, 1] (or be NaN), got {finite.min()}..{finite.max()}: "
                "pass the verifier's accuracy outcome, not a shaped reward"
            )
