"""A synthetic shop with a large catalogue: Zipf popularity and sequences with structure.

Items have Zipf popularity (weight 1 / rank^s, ranks a random permutation of the ids, so
popularity says nothing about an id) and belong to categories of `category_size`
consecutive ids. A user's sequence starts at a popularity-drawn item; each next event
stays in the previous item's category with probability `stay` (drawn there by
popularity: browsing similar products) and otherwise jumps to a popularity-drawn item
anywhere. Lengths are 3 + geometric, mean `mean_len`. So there is something to learn
(categories, popularity) and the long tail is as long as a real shop's.

Only users with at least `min_eval_events` events are evaluated (leave-one-out), so
validation over 10^6 items stays affordable on a CPU; every user trains.
"""

from __future__ import annotations

import numpy as np

from recpipe.features.sequences import Features, Vocabulary


def zipf_weights(num_items: int, s: float, rng: np.random.Generator) -> np.ndarray:
    """[num_items] popularity weights (sum 1), rank order a random permutation of ids."""
    ranks = rng.permutation(num_items)
    w = 1.0 / (ranks + 1.0) ** s
    return w / w.sum()


def synthetic_features(
    num_items: int = 1_000_000,
    num_events: int = 1_000_000,
    mean_len: float = 10.0,
    zipf_s: float = 1.0,
    category_size: int = 100,
    stay: float = 0.6,
    max_len: int = 50,
    min_eval_events: int = 30,
    seed: int = 0,
) -> Features:
    """About `num_events` events over `num_items` items, as the pipeline's Features."""
    rng = np.random.default_rng(seed)
    weights = zipf_weights(num_items, zipf_s, rng)
    cdf = np.cumsum(weights)
    cats = -(-num_items // category_size)
    padded = np.zeros(cats * category_size)
    padded[:num_items] = weights
    cat_cdf = np.cumsum(padded.reshape(cats, category_size), axis=1)
    lengths: list[int] = []
    total = 0
    p = 1.0 / max(mean_len - 2.0, 1.0)
    while total < num_events:
        n = 3 + int(rng.geometric(p)) - 1
        n = min(n, num_events - total) if num_events - total >= 3 else 3
        lengths.append(n)
        total += n
    lens = np.array(lengths)
    users = len(lens)
    seqs = np.zeros((users, int(lens.max())), dtype=np.int64)
    current = np.searchsorted(cdf, rng.random(users) * cdf[-1])
    seqs[:, 0] = current
    for t in range(1, int(lens.max())):
        active = np.nonzero(lens > t)[0]
        prev = seqs[active, t - 1]
        stays = rng.random(len(active)) < stay
        nxt = np.searchsorted(cdf, rng.random(len(active)) * cdf[-1])
        if stays.any():
            cat = prev[stays] // category_size
            row = cat_cdf[cat]
            u = rng.random(len(cat)) * row[:, -1]
            within = (row < u[:, None]).sum(axis=1)
            nxt[stays] = np.minimum(cat * category_size + within, num_items - 1)
        seqs[active, t] = nxt
    vocab = Vocabulary(tuple(f"i{i:07d}" for i in range(num_items)))
    sequences = tuple(seqs[u, : lens[u]] + 1 for u in range(users))  # 1-based, 0 = PAD
    return Features(
        vocab=vocab,
        users=tuple(f"u{u}" for u in range(users)),
        sequences=sequences,
        max_len=max_len,
        min_eval_events=min_eval_events,
    )
