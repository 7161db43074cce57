"""FreeLB (Zhu et al. 2020): K ascent steps from a random start inside the ball.

As an attack it is a randomly started PGD with few, large steps; as a training method (the
`freelb` defense) the parameter gradient is averaged over its K ascent steps."""

from robustag.attack import iterative_params
from robustag.attacks.pgd import PGD


class FreeLB(PGD):
    name = "freelb"
    summary = "K ascent steps from a random start (FreeLB's adversary)"
    params = iterative_params(steps=3, step_size=0.5, random_start_default=True)
