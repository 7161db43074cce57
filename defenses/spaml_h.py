"""spaml-h: self-paced adversarial metric learning with hard weights, v_j = 1[ℓ_j < λ]."""

from robustag.plugins import Param
from robustag.selfpaced import SelfPacedDefense


class SpamlHard(SelfPacedDefense):
    name = "spaml-h"
    summary = "self-paced adversarial training, hard weights: only triples with ℓ < λ count"
    params = {**SelfPacedDefense.params, "scheme": Param("hard", "weighting scheme", choices=("hard",))}
