"""Full-ranking evaluation and the blessing.

Every model (the challenger, the current production model, the most-popular baseline)
is ranked on the same frozen evaluation set in raw-id space, so a production model with
an older vocabulary is compared fairly: its unknown targets are misses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recpipe.core import storage
from recpipe.evaluation.config import EvalConfig
from recpipe.features.sequences import Features
from recpipe.ranking import metrics
from recpipe.ranking.protocol import EvalSet, ScoreFn, rank_targets
from recpipe.registry import store as registry
from recpipe.training.model import ModelBundle, exclude_history


def popularity_scorer(counts: np.ndarray) -> ScoreFn:
    """Most-popular baseline: the same scores for everyone, history excluded."""
    base = torch.from_numpy(counts.astype(np.float32))
    base[0] = float("-inf")

    def score(histories: list[np.ndarray]) -> torch.Tensor:
        out = base.repeat(len(histories), 1)
        exclude_history(out, histories)
        return out

    return score


def model_ranks(bundle: ModelBundle, eval_set: EvalSet, batch_size: int) -> np.ndarray:
    histories, targets = eval_set.translated(bundle.vocab)
    return rank_targets(bundle.score_encoded, histories, targets, batch_size)


def top_k_coverage(
    score: ScoreFn, histories: list[np.ndarray], num_items: int, k: int, batch_size: int
) -> float:
    seen: set[int] = set()
    for start in range(0, len(histories), batch_size):
        top = torch.topk(score(histories[start : start + batch_size]), k, dim=1).indices
        seen.update(top.ravel().tolist())
    return len(seen - {0}) / max(num_items, 1)


@dataclass(frozen=True)
class Blessing:
    blessed: bool
    reason: str


def bless(
    challenger: dict[str, float],
    baseline: dict[str, float],
    production: dict[str, float] | None,
    config: EvalConfig,
) -> Blessing:
    """Pure decision: beat the baseline by the margin and, if any, production too."""
    m = config.metric
    c, b = challenger[m], baseline[m]
    if not c > b + config.baseline_margin:
        return Blessing(
            False,
            f"{m} {c:.4f} does not beat most-popular {b:.4f} "
            f"by more than {config.baseline_margin:g}",
        )
    if production is None:
        return Blessing(True, f"{m} {c:.4f} beats most-popular {b:.4f}; no production model")
    p = production[m]
    if not c >= p + config.production_margin:
        return Blessing(
            False, f"{m} {c:.4f} is below production {p:.4f} + margin {config.production_margin:g}"
        )
    return Blessing(
        True,
        f"{m} {c:.4f} beats most-popular {b:.4f} and production {p:.4f} "
        f"(margin {config.production_margin:g})",
    )


@dataclass(frozen=True)
class EvalReport:
    challenger: dict[str, float]
    baseline: dict[str, float]
    production: dict[str, float] | None
    production_version: str | None
    blessing: Blessing
    num_users: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "challenger": self.challenger,
            "baseline": self.baseline,
            "production": self.production,
            "production_version": self.production_version,
            "blessed": self.blessing.blessed,
            "reason": self.blessing.reason,
            "num_users": self.num_users,
            **self.extra,
        }

    def markdown(self) -> str:
        cols = ["challenger", "most-popular"] + (["production"] if self.production else [])
        rows = [self.challenger, self.baseline] + ([self.production] if self.production else [])
        lines = [
            "# Evaluation",
            "",
            f"Full ranking over all items, history excluded, {self.num_users} users "
            "(leave-one-out test item).",
            "",
            "| metric | " + " | ".join(cols) + " |",
            "|---|" + "---|" * len(cols),
        ]
        for name in self.challenger:
            if name in self.baseline:
                vals = " | ".join(f"{r[name]:.4f}" for r in rows)
                lines.append(f"| {name} | {vals} |")
        for key, value in self.extra.items():
            lines.append(f"\n{key}: {value}")
        verdict = "BLESSED" if self.blessing.blessed else "NOT BLESSED"
        version = f" (production version {self.production_version})" if self.production else ""
        lines += ["", f"**{verdict}**{version}: {self.blessing.reason}", ""]
        return "\n".join(lines)


def evaluate(
    bundle: ModelBundle,
    features: Features,
    config: EvalConfig,
    production: ModelBundle | None = None,
    production_version: str | None = None,
) -> EvalReport:
    """Challenger, baseline and (optional) production on the test split, then bless."""
    test = EvalSet.from_features(features, "test")
    bs = config.batch_size
    challenger = metrics.ranking_metrics(model_ranks(bundle, test, bs))
    pop = popularity_scorer(features.popularity("test"))
    baseline = metrics.ranking_metrics(rank_targets(pop, test.histories, test.targets, bs))
    prod = metrics.ranking_metrics(model_ranks(production, test, bs)) if production else None
    coverage = top_k_coverage(bundle.score_encoded, test.histories, features.num_items, 10, bs)
    return EvalReport(
        challenger=challenger,
        baseline=baseline,
        production=prod,
        production_version=production_version,
        blessing=bless(challenger, baseline, prod, config),
        num_users=len(test.targets),
        extra={"catalog_coverage@10": round(coverage, 4)},
    )


def evaluate_against_production(
    model_dir: Path, features_dir: Path, config: EvalConfig, registry_uri: str, model_name: str
) -> EvalReport:
    """Load the challenger and, if the registry has one, the production model; evaluate."""
    production_bundle, version = None, None
    pointer = registry.production(registry_uri, model_name)
    if pointer is not None:
        version = str(pointer["version"])
        local = registry.fetch(storage.join(registry_uri, model_name, version))
        production_bundle = ModelBundle.load(local)
    return evaluate(
        ModelBundle.load(model_dir),
        Features.load(features_dir),
        config,
        production=production_bundle,
        production_version=version,
    )
