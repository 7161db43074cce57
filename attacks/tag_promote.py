"""Tag promotion by fake users (a shilling attack on tags, beyond the paper).

`fake_users` new users (a fraction of the real ones) each tag `items_per_user` items, drawn in
proportion to item popularity so that the promotion reaches many posts, with the target tag
and `filler` of the item's most frequent tags for camouflage. Its success is how often the
target tag enters the top-N of test posts that do not carry it (`promotion@N`).
"""

import numpy as np

from robustag.attack import DataAttack, Param, PluginError, chosen_tag, fraction, non_negative, positive
from robustag.preprocess import Posts, replace_train


class TagPromote(DataAttack):
    name = "tag-promote"
    summary = "fake users tag popular items with one target tag (shilling-style promotion)"
    strength = "fake_users"
    adds_users = True
    params = {
        "target": Param(-1, "tag id to promote; -1: the training tag at the 25th popularity percentile"),
        "fake_users": Param(0.05, "fake users, as a fraction of the real users", **fraction()),
        "items_per_user": Param(20, "items each fake user tags", **positive()),
        "filler": Param(2, "filler tags per fake post: the item's most frequent ones", **non_negative()),
    }

    def check(self, split) -> None:
        self.target_tag(split)
        if self.items_per_user > split.n_items:
            raise PluginError(f"{self.name}: items_per_user={self.items_per_user} exceeds the {split.n_items} items of "
                              f"the data set (a fake user tags each item once)")

    def target_tag(self, split) -> int:
        return chosen_tag(self.target, split, self.name)

    def poison(self, split, seed):
        rng = np.random.default_rng(seed)
        target = self.target_tag(split)
        users, items, tags = split.train.triples()
        if self.fake_users == 0:  # strength 0: no fake user, the clean training data
            return split
        n_fake = max(1, int(round(self.fake_users * split.n_users)))  # some, however few, were asked for
        item_popularity = np.bincount(items, minlength=split.n_items).astype(float)
        per_user = self.items_per_user
        fake_items = np.concatenate([
            rng.choice(split.n_items, size=per_user, replace=False, p=item_popularity / item_popularity.sum())
            for _ in range(n_fake)
        ])
        fake_users = np.repeat(split.n_users + np.arange(n_fake), per_user)
        filler = _top_tags_per_item(items, tags, split.n_items, split.n_tags, self.filler)[fake_items]
        post_tags = np.concatenate([np.full((len(fake_items), 1), target), filler], axis=1)
        keep = post_tags >= 0
        keep[:, 1:] &= post_tags[:, 1:] != target
        counts = keep.sum(1)
        new_users = np.concatenate([users, np.repeat(fake_users, counts)])
        new_items = np.concatenate([items, np.repeat(fake_items, counts)])
        new_tags = np.concatenate([tags, post_tags[keep]])
        labels = np.concatenate([split.user_labels, [f"fake-{k}" for k in range(n_fake)]])
        return replace_train(split, Posts.from_triples(new_users, new_items, new_tags), user_labels=labels)


def _top_tags_per_item(items, tags, n_items, n_tags, k):
    """(n_items, k) the k most frequent tags of each item, -1 where it has fewer."""
    out = np.full((n_items, k), -1, dtype=np.int64)
    if k == 0:
        return out
    order = np.lexsort((tags, items))
    pairs = np.stack([items[order], tags[order]], axis=1)
    unique, counts = np.unique(pairs, axis=0, return_counts=True)
    ranking = np.lexsort((-counts, unique[:, 0]))
    unique = unique[ranking]
    first = np.searchsorted(unique[:, 0], unique[:, 0], side="left")
    rank = np.arange(len(unique)) - first
    keep = rank < k
    out[unique[keep, 0], rank[keep]] = unique[keep, 1]
    return out
