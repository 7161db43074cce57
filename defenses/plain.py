"""plain: the base model's own loss alone (the metric hinge, or BPR for PITF)."""

from robustag.defense import Defense


class Plain(Defense):
    name = "plain"
    summary = "the model's own loss alone, no adversarial training"
    params = {}
    stacks = True
