"""robustag: robustness benchmarking for personalized tag recommendation.

The public API (see `robustag.api`): `load_dataset`, `train`, `load`, `attack`, `bench`, `tune`,
`Run`, `verify_claims`, `power`, and the plugin registries `ATTACKS`, `DEFENSES` and `MODELS`.
"""

__version__ = "0.2.3"

from robustag.api import (Trained, attack, bench, build_attacks, load, load_dataset, load_plugins,  # noqa: E402
                          power, sanity_checks, train, tune)
from robustag.attack import ATTACKS  # noqa: E402
from robustag.claims import verify_claims  # noqa: E402
from robustag.defense import DEFENSES  # noqa: E402
from robustag.errors import RobustagError  # noqa: E402
from robustag.models import MODELS  # noqa: E402
from robustag.run import Run  # noqa: E402

__all__ = ["ATTACKS", "DEFENSES", "MODELS", "RobustagError", "Run", "Trained", "__version__", "attack", "bench", "build_attacks",
           "load", "load_dataset", "load_plugins", "power", "sanity_checks", "train", "tune", "verify_claims"]
