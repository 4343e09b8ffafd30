"""The local search: Optuna's TPE over `TuningConfig.space`, each trial a real training run
scored on validation NDCG@10, hopeless trials stopped by the median rule after each epoch.

Trial 0 is always the unchanged training config (enqueued), so the best config found is
at least as good as the defaults under the same budget, by construction. With the same
seed, data and machine the sampler proposes the same trials and each trains the same way
(the trainer is seeded), so a study is reproducible when the trial count, not the clock,
ends it.
"""

from __future__ import annotations

import csv
import html
import io
import logging
import math
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna

from recpipe.core.config import clip
from recpipe.features.sequences import Features
from recpipe.monitoring.report import line_chart
from recpipe.training.config import TrainConfig
from recpipe.training.trainer import EARLY_STOP_METRIC, train
from recpipe.tuning.config import MAX_LEN, Distribution, TuningConfig, Value
from recpipe.tuning.window import with_max_len

log = logging.getLogger(__name__)

OBJECTIVE = EARLY_STOP_METRIC  # validation NDCG@10, what early stopping also watches


@dataclass(frozen=True)
class TrialRow:
    number: int
    state: str  # complete | pruned | failed
    value: float | None  # best validation NDCG@10 the trial reached
    params: dict[str, Value]
    epochs: int
    seconds: float
    started: str  # ISO time, the chart's x


@dataclass
class TuneResult:
    """The study: the best config (to train with), its score, the default's, every trial."""

    best_config: TrainConfig
    best_max_len: int
    best_value: float
    default_value: float
    best_trial: int
    trials: list[TrialRow] = field(default_factory=list)
    seconds: float = 0.0

    def metrics(self) -> dict[str, float]:
        states = [t.state for t in self.trials]
        return {
            f"best_valid_{OBJECTIVE}": round(self.best_value, 5),
            f"default_valid_{OBJECTIVE}": round(self.default_value, 5),
            "best_trial": self.best_trial,
            "trials": len(self.trials),
            "trials_pruned": states.count("pruned"),
            "trials_failed": states.count("failed"),
            "tuning_seconds": round(self.seconds, 1),
        }

    def _columns(self) -> list[str]:
        names = sorted({k for t in self.trials for k in t.params})
        return ["trial", "state", f"valid {OBJECTIVE}", "epochs", "seconds", *names]

    def _cells(self, t: TrialRow) -> list[str]:
        names = self._columns()[5:]
        value = "" if t.value is None else f"{t.value:.4f}"
        return [
            str(t.number),
            t.state + (" (best)" if t.number == self.best_trial else ""),
            value,
            str(t.epochs),
            f"{t.seconds:.1f}",
            *[_fmt(t.params.get(n)) for n in names],
        ]

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(self._columns())
        for t in self.trials:
            writer.writerow(self._cells(t))
        return out.getvalue()

    def markdown(self) -> str:
        cols = self._columns()
        lines = [
            f"# Tuning: best valid {OBJECTIVE} {self.best_value:.4f} (trial {self.best_trial}), "
            f"defaults {self.default_value:.4f}",
            "",
            f"{len(self.trials)} trials in {self.seconds:.0f} s; trial 0 is the unchanged "
            "training config.",
            "",
            "| " + " | ".join(cols) + " |",
            "|" + "---|" * len(cols),
        ]
        lines += ["| " + " | ".join(self._cells(t)) + " |" for t in self.trials]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        """One self-contained page: the score of every trial over the study (inline SVG,
        drawn by the monitoring report's chart) and the trials table."""
        e = html.escape
        scored = [t for t in self.trials if t.value is not None]
        best_so_far: list[tuple[str, float | None]] = []
        top = -math.inf
        for t in scored:
            if t.state == "complete":
                top = max(top, t.value or 0.0)
            best_so_far.append((t.started, top if top > -math.inf else None))
        series = {
            ("completed or pruned trial", OBJECTIVE): [(t.started, t.value) for t in scored],
            ("best completed so far", OBJECTIVE): best_so_far,
        }
        colours = {k: c for k, c in zip(series, ("#1a73e8", "#188038"), strict=True)}
        chart = line_chart(series, colours, lambda v: "" if v is None else f"{v:.4f}")
        head = "".join(f"<th>{e(c)}</th>" for c in self._columns())
        rows = "".join(
            "<tr>" + "".join(f"<td>{e(c)}</td>" for c in self._cells(t)) + "</tr>"
            for t in self.trials
        )
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>Tuning study</title>"
            f"<style>{_CSS}</style></head><body>"
            f"<h1>Tuning: best valid {e(OBJECTIVE)} {self.best_value:.4f} "
            f"(trial {self.best_trial}), defaults {self.default_value:.4f}</h1>"
            f"<figure><figcaption>valid {e(OBJECTIVE)} per trial, by start time "
            "(a pruned trial shows the best it reached)</figcaption>"
            f"{chart}<p class='legend'><span style='color:#1a73e8'>&#9679; trial</span> "
            "<span style='color:#188038'>&#9679; best completed so far</span></p></figure>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
            "</body></html>"
        )


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}"
    "table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;"
    "padding:.25em .5em}svg text{font-size:11px;fill:#444}figcaption{font-weight:600}"
    ".legend span{margin-right:1.2em}"
)


def _fmt(v: Value | None) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _suggest(trial: optuna.Trial, name: str, dist: Distribution) -> Value:
    if dist.kind == "categorical":
        choice = trial.suggest_categorical(name, list(dist.choices or []))
        return choice if choice is not None else ""  # choices hold no None
    low, high = float(dist.low or 0), float(dist.high or 0)
    if dist.kind == "int":
        step = max(1, int(dist.step or 1))
        return trial.suggest_int(name, int(low), int(high), step=step, log=dist.log)
    return trial.suggest_float(name, low, high, step=dist.step, log=dist.log)


def _space_with_defaults(
    space: Mapping[str, Distribution], defaults: Mapping[str, Value]
) -> dict[str, Distribution]:
    """A categorical dimension that lacks the default's value gets it: trial 0 must be
    expressible in the space (Optuna refuses an enqueued choice it does not know)."""
    out = dict(space)
    for name, dist in space.items():
        if dist.kind == "categorical" and defaults[name] not in (dist.choices or []):
            out[name] = dist.model_copy(update={"choices": [defaults[name], *(dist.choices or [])]})
    return out


def trial_config(base: TrainConfig, params: Mapping[str, Value], **overrides: Any) -> TrainConfig:
    """`base` with a trial's TrainConfig parameters (not max_len), validated."""
    values = {k: v for k, v in params.items() if k != MAX_LEN}
    return TrainConfig.model_validate({**base.model_dump(), **values, **overrides})


def tune(
    features: Features,
    base: TrainConfig,
    config: TuningConfig,
    workdir: Path,
    on_trial: Callable[[TrialRow], None] | None = None,
) -> TuneResult:
    """Run the study; the best trial's config, with `base`'s epoch budget restored, is
    what the training step should use."""
    t0 = time.monotonic()
    deadline = t0 + config.timeout_minutes * 60
    defaults: dict[str, Value] = {
        name: features.max_len if name == MAX_LEN else getattr(base, name) for name in config.space
    }
    if MAX_LEN in config.space:
        too_long = [v for v in config.space[MAX_LEN].values() if float(v) > features.max_len]
        if too_long:
            raise ValueError(
                f"tuning.space.{MAX_LEN}: {too_long} exceed the features' max_len "
                f"({features.max_len}); build the features with the longest length searched"
            )
    space = _space_with_defaults(config.space, defaults)
    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=config.pruner_startup_trials,
            n_warmup_steps=config.pruner_warmup_epochs,
        )
        if config.pruning
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=config.seed), pruner=pruner
    )
    study.enqueue_trial(defaults)
    epochs = config.trial_max_epochs or base.max_epochs
    rows: list[TrialRow] = []

    def objective(trial: optuna.Trial) -> float:
        params = {name: _suggest(trial, name, dist) for name, dist in space.items()}
        minutes_left = max((deadline - time.monotonic()) / 60, 1e-3)
        best = -math.inf
        done = 0

        def on_epoch(row: dict[str, float]) -> None:
            nonlocal best, done
            step, value = int(row["epoch"]), float(row[OBJECTIVE])
            best, done = max(best, value), done + 1
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {step + 1}: {value:.4f} below the median")

        started = datetime.now(UTC).isoformat()
        t = time.monotonic()
        work = workdir / f"trial-{trial.number:04d}"
        state, value = "failed", None
        try:
            cfg = trial_config(
                base,
                params,
                max_epochs=epochs,
                max_train_minutes=min(base.max_train_minutes or math.inf, minutes_left),
                checkpoint_uri=None,
            )
            trial_features = with_max_len(features, int(params.get(MAX_LEN) or 0))
            result = train(trial_features, cfg, work, on_epoch)
            state, value = "complete", float(result.best_valid[OBJECTIVE])
            return value
        except optuna.TrialPruned:
            state, value = "pruned", best
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
            row = TrialRow(trial.number, state, value, params, done, time.monotonic() - t, started)
            rows.append(row)
            log.info(
                "trial %d %s valid %s %s in %.1fs: %s",
                row.number,
                state,
                OBJECTIVE,
                "-" if value is None else f"{value:.4f}",
                row.seconds,
                clip(str(params), 300),
            )
            if on_trial:
                on_trial(row)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(
        objective, n_trials=config.n_trials, timeout=config.timeout_minutes * 60, catch=(ValueError,)
    )
    complete = [r for r in rows if r.state == "complete" and r.value is not None]
    if not complete:
        raise RuntimeError("tuning: no trial completed (see the trials' errors in the log)")
    default_row = rows[0]
    best_row = max(complete, key=lambda r: (r.value, -r.number))
    best = trial_config(base, best_row.params)
    return TuneResult(
        best_config=best,
        best_max_len=int(best_row.params.get(MAX_LEN, features.max_len)),
        best_value=float(best_row.value or 0.0),
        default_value=float(default_row.value or 0.0) if default_row.state == "complete" else 0.0,
        best_trial=best_row.number,
        trials=rows,
        seconds=time.monotonic() - t0,
    )
