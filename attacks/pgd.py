"""PGD (Madry et al. 2018): K projected ascent steps of size α from an optional random start."""

from robustag.attack import IterativeAttack, iterative_params


class PGD(IterativeAttack):
    name = "pgd"
    summary = "projected gradient descent: K projected steps, optional random start"
    params = iterative_params(steps=10, step_size=0.25, random_start_default=True)
    trainable = True

    def schedule(self):
        return self.steps, self.step_size, self.random_start
