"""Which training triples do the self-paced weights admit when tags were replaced?

A diagnostic for the paper's Table 6 (SPAML is said to resist random tag replacement):
poison the training data as `robustag bench` does (`tag-replace`, same seed), train a
self-paced defense on it, and record per epoch the share of adversarial quadruples admitted
(weight > 0) and their mean adversarial loss, separately for replaced and intact triples.
If the weights shut the replaced triples out, the adversarial term trains on clean data only.

    python benchmarks/selfpaced_noise.py [--dataset lastfm] [--rate 0.3] [--defense spaml-h]
                                         [--seed 0] [--compile] [--out FILE.json]
"""

from __future__ import annotations

import numpy as np
import torch
from common import environment, parser, record, write

from robustag import paths
from robustag.attack import ATTACKS
from robustag.defense import DEFENSES
from robustag.evaluation import evaluate_model
from robustag.preprocess import load_split
from robustag.selfpaced import SelfPacedDefense, self_paced_weights
from robustag.training import default_config, resolve_device, train


def triple_keys(users, items, tags, n_items: int, n_tags: int):
    return (users * n_items + items) * n_tags + tags


def replaced_keys(split, poisoned) -> np.ndarray:
    """Sorted keys of the poisoned training triples that the clean training data lacks."""
    keys = lambda posts: triple_keys(*posts.triples(), split.n_items, split.n_tags)
    return np.setdiff1d(keys(poisoned.train), keys(split.train))


def tracing(spec: str, replaced: torch.Tensor, n_items: int, n_tags: int) -> SelfPacedDefense:
    """The defense `spec`, whose per-epoch figures also split admission by replaced / intact."""
    defense, values = DEFENSES.resolve(spec)
    if not issubclass(defense, SelfPacedDefense):
        raise SystemExit(f"--defense {spec}: not a self-paced defense")

    class Tracing(defense):
        def adversarial_losses(self, model, embeddings, eps=None):
            self.last_losses = super().adversarial_losses(model, embeddings, eps)
            return self.last_losses

        def loss(self, model, batch):
            loss, figures = super().loss(model, batch)
            weights = self_paced_weights(self.last_losses, figures["lambda"], self.scheme, self.gamma)
            keys = triple_keys(batch.users, batch.items, batch.positives, n_items, n_tags)
            is_replaced = torch.isin(keys, replaced).unsqueeze(1).expand_as(weights)
            admitted, losses = (weights > 0).float(), self.last_losses.detach()
            for name, rows in (("replaced", is_replaced), ("intact", ~is_replaced)):
                figures[f"admitted_{name}"] = admitted[rows].mean()
                figures[f"adv_loss_{name}"] = losses[rows].mean()
            return loss, figures

    return Tracing(**values)


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--dataset", default="lastfm")
    options.add_argument("--rate", type=float, default=0.3)
    options.add_argument("--defense", default="spaml-h")
    options.add_argument("--seed", type=int, default=0)
    args = options.parse_args()
    device = resolve_device(args.device)
    split = load_split(args.dataset, paths.data_dir())
    poisoned = ATTACKS.create(f"tag-replace:rate={args.rate}").poison(split, seed=args.seed)
    replaced = torch.as_tensor(replaced_keys(split, poisoned), device=device)
    regime = tracing(args.defense, replaced, split.n_items, split.n_tags)
    result = train(poisoned, default_config("metric", seed=args.seed), device, regime=regime, compile=args.compile)
    rows = []
    for epoch in result.history:
        record(rows, {k: epoch[k] for k in ("epoch", "lambda", "admitted", "admitted_replaced", "admitted_intact",
                                            "adv_loss_replaced", "adv_loss_intact", "valid_ndcg@3") if k in epoch})
    test = evaluate_model(result.model, split.test, split.n_tags, device).summary()
    print(f"replaced triples: {len(replaced)} of {poisoned.train.n_assignments}; best epoch {result.best_epoch}; "
          f"test NDCG@3 {test['ndcg@3']:.4f}")
    write(args.out, {"dataset": args.dataset, "rate": args.rate, "defense": regime.spec, "seed": args.seed,
                     "replaced": len(replaced), "train_triples": poisoned.train.n_assignments,
                     "best_epoch": result.best_epoch, "test": test, **environment(device, args.compile), "rows": rows})


if __name__ == "__main__":
    main()
