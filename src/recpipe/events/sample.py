"""A deterministic built-in event set, so the demo and the tests need no download.

It is shaped like shop data: Zipf-skewed item popularity, items grouped into categories
that users prefer, sessions of several views on one day, repeat purchases, and timestamps
at second precision with deliberate same-second ties.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recpipe.events.contract import ITEM, TIMESTAMP, USER

START = 1_672_531_200  # 2023-01-01 UTC


def _categories(rng: np.random.Generator, num_items: int) -> np.ndarray:
    """Each item's category: the first draw of the sample's generator."""
    return rng.integers(0, max(4, num_items // 25), size=num_items)


def item_id(index: int) -> str:
    return f"sku-{index:04d}"


def generate_item_attributes(num_items: int = 400, seed: int = 7) -> dict[str, list[str]]:
    """The catalogue behind `generate_events` (same seed): item id -> [category, price band]."""
    cat_of = _categories(np.random.default_rng(seed), num_items)
    return {
        item_id(i): [f"category-{int(c):02d}", f"price-band-{i % 3}"] for i, c in enumerate(cat_of)
    }


def generate_events(
    num_users: int = 1500, num_items: int = 400, mean_events: int = 20, seed: int = 7
) -> pd.DataFrame:
    """Events with learnable sequential structure (item i tends to be followed by i+1)."""
    rng = np.random.default_rng(seed)
    cat_of = _categories(rng, num_items)
    num_cats = int(cat_of.max()) + 1 if num_items else 0
    pop = 1.0 / np.arange(1, num_items + 1) ** 0.9
    rng.shuffle(pop)
    rows: list[tuple[str, str, int]] = []
    for u in range(num_users):
        n = max(5, int(rng.poisson(mean_events)))
        fav = rng.choice(num_cats, size=2, replace=False)
        t = START + int(rng.integers(0, 300 * 86_400))
        item = int(rng.choice(num_items, p=pop / pop.sum()))
        for _ in range(n):
            rows.append((f"u{u:05d}", item_id(item), t))
            r = rng.random()
            if r < 0.5:  # sequential pattern: next item in the catalogue's "series"
                item = (item + 1) % num_items
            elif r < 0.6:  # repeat purchase
                pass
            elif r < 0.85:  # stay in a favourite category
                same = np.flatnonzero(cat_of == rng.choice(fav))
                w = pop[same]
                item = int(rng.choice(same, p=w / w.sum()))
            else:  # popular item
                item = int(rng.choice(num_items, p=pop / pop.sum()))
            # sessions: mostly seconds apart (some ties), sometimes days apart
            gap = rng.choice(3, p=[0.1, 0.6, 0.3])
            t += (
                0
                if gap == 0
                else int(rng.integers(5, 600) if gap == 1 else rng.integers(86_400, 20 * 86_400))
            )
    df = pd.DataFrame(rows, columns=[USER, ITEM, TIMESTAMP])
    # shops log events interleaved across users, not grouped by user
    order = np.argsort(df[TIMESTAMP].to_numpy(), kind="stable")
    return df.iloc[order].reset_index(drop=True)
