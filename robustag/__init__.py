"""robustag: robustness benchmarking for personalized tag recommendation.

The public API (see `robustag.api`): `load_dataset`, `train`, `load`, `attack`, `bench`, `tune`,
`Run`, `verify_claims`, `power`, and the plugin registries `ATTACKS`, `DEFENSES` and `MODELS`.
"""

from robustag.version import __version__
from robustag.api import (Trained, attack, bench, build_attacks, load, load_dataset, load_plugins, power,
                          sanity_checks, train, tune)
from robustag.attack import ATTACKS
from robustag.claims import verify_claims
from robustag.defense import DEFENSES
from robustag.errors import RobustagError
from robustag.models import MODELS
from robustag.run import Run

__all__ = ["ATTACKS", "DEFENSES", "MODELS", "RobustagError", "Run", "Trained", "__version__", "attack", "bench", "build_attacks",
           "load", "load_dataset", "load_plugins", "power", "sanity_checks", "train", "tune", "verify_claims"]
