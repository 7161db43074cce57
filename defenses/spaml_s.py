"""spaml-s: self-paced adversarial metric learning with soft weights (linear by default;
logarithmic and mixture offered), v_j decreasing in the adversarial loss ℓ_j."""

from robustag.plugins import Param
from robustag.selfpaced import SelfPacedDefense


class SpamlSoft(SelfPacedDefense):
    name = "spaml-s"
    summary = "self-paced adversarial training, soft weights v(ℓ; λ) ∈ [0, 1]"
    params = {
        **SelfPacedDefense.params,
        "scheme": Param("linear", "soft weighting scheme", choices=("linear", "log", "mixture")),
    }
