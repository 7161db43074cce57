"""FGSM (Goodfellow et al. 2015), per-row as in APR: one step of size ε along ∇/‖∇‖ (L2) or sign(∇) (L∞)."""

from robustag.attack import EmbeddingAttack, IterativeAttack


class FGSM(IterativeAttack):
    name = "fgsm"
    summary = "fast gradient sign/norm method: one full-budget step"
    params = EmbeddingAttack.params
    trainable = True

    def schedule(self):
        return 1, 1.0, False
