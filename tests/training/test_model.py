"""The filter encoder (BSARec's block made causal): the filter keeps exactly the lowest
frequencies, no position sees a later item, per-position training equals BSARec's
training on prefixes, and its architecture round-trips through a bundle while bundles
from before it still load as plain SASRec."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from recpipe.features.sequences import Features, Vocabulary
from recpipe.training.config import TrainConfig
from recpipe.training.model import (
    ARCH_FILE,
    ENCODER_FILTER,
    ENCODER_SASREC,
    Architecture,
    BundleError,
    ModelBundle,
    SASRec,
    causal_lowpass,
    lowpass_matrix,
    model_fields,
)
from recpipe.training.trainer import train
from tests.support import TINY_TRAINING

FILTER = Architecture(
    num_items=30,
    max_len=12,
    hidden_dim=16,
    num_layers=2,
    num_heads=2,
    dropout=0.0,
    encoder=ENCODER_FILTER,
    filter_alpha=0.7,
    filter_cutoff=5,
    relative_positions=1,
)


def _wave(length: int, freq: int, phase: float = 0.3) -> torch.Tensor:
    t = torch.arange(length, dtype=torch.float32)
    return torch.cos(2 * math.pi * freq * t / length + phase)


@pytest.mark.parametrize(("cutoff", "kept"), [(1, 0), (5, 2), (6, 3), (9, 4)])
def test_the_filter_keeps_exactly_the_lowest_frequencies(cutoff: int, kept: int) -> None:
    length = 16
    low = lowpass_matrix(length, cutoff)
    for freq in range(length // 2 + 1):
        wave = _wave(length, freq)
        out = low @ wave
        if freq <= kept:  # rfft bins 0..cutoff // 2 pass unchanged
            torch.testing.assert_close(out, wave, atol=1e-5, rtol=0)
        else:  # every higher one is removed
            assert out.abs().max() < 1e-5, freq


def test_bsarecs_filter_is_not_causal_ours_is_its_last_row() -> None:
    length, cutoff = 10, 5
    full = lowpass_matrix(length, cutoff)
    # BSARec's filter mixes later positions into earlier ones: per-position training
    # with it would show each position the items it has to predict.
    assert full.triu(1).abs().max() > 0.05
    causal = causal_lowpass(length, cutoff)
    assert torch.equal(causal.triu(1), torch.zeros_like(causal))
    # At the last position of a full window it is BSARec's filter exactly ...
    x = torch.randn(length, 3)
    torch.testing.assert_close((causal @ x)[-1], (full @ x)[-1])
    # ... and at position t, BSARec's filter at the end of a window ending at t (zeros before).
    t = 6
    window = torch.cat([torch.zeros(length - t - 1, 3), x[: t + 1]])
    torch.testing.assert_close((causal @ x)[t], (full @ window)[-1])


def test_no_position_sees_a_later_item() -> None:
    torch.manual_seed(0)
    model = SASRec(FILTER).eval()
    seq = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]])
    changed = seq.clone()
    changed[0, 7:] = torch.tensor([20, 21, 22, 23, 24])
    with torch.no_grad():
        a, b = model.encode(seq), model.encode(changed)
    torch.testing.assert_close(a[0, :7], b[0, :7], atol=0, rtol=0)
    assert (a[0, 7:] - b[0, 7:]).abs().max() > 1e-3  # later positions do see them


def test_every_position_is_what_its_prefix_gives_at_the_last_position() -> None:
    """Per-position training sees exactly BSARec's (prefix -> next item) examples, and
    trimming the left padding changes nothing."""
    torch.manual_seed(0)
    model = SASRec(FILTER).eval()
    items = [3, 4, 5, 6, 7, 8, 9, 10]
    seq = torch.tensor([[0] * (FILTER.max_len - len(items)) + items])
    with torch.no_grad():
        hidden = model.encode(seq)[0]
        for t in range(1, len(items) + 1):
            prefix = torch.tensor([[0] * (FILTER.max_len - t) + items[:t]])
            torch.testing.assert_close(model.encode(prefix)[0, -1], hidden[-1 - len(items) + t])
            torch.testing.assert_close(
                model.encode(torch.tensor([items[:t]]))[0, -1], hidden[-1 - len(items) + t]
            )


def test_the_filter_alone_and_attention_alone_differ() -> None:
    """alpha weighs the two branches (alpha 0 is attention only, 1 the filter only)."""
    torch.manual_seed(0)
    seq = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]])
    outs = []
    for alpha in (0.0, 1.0):
        torch.manual_seed(0)
        model = SASRec(replace(FILTER, filter_alpha=alpha)).eval()
        with torch.no_grad():
            outs.append(model.encode(seq))
    assert (outs[0] - outs[1]).abs().max() > 1e-2


def test_train_config_maps_to_the_architecture() -> None:
    assert model_fields(TrainConfig(encoder="sasrec")) == {}
    config = TrainConfig(
        encoder="filter", filter_alpha=0.5, filter_cutoff=3, relative_positions=True
    )
    fields = model_fields(config)
    assert fields == {
        "encoder": ENCODER_FILTER,
        "filter_alpha": 0.5,
        "filter_cutoff": 3,
        "relative_positions": 1,
        "whole_window": 0,
    }


def _bundle(arch: Architecture) -> ModelBundle:
    torch.manual_seed(0)
    vocab = Vocabulary(tuple(f"i{k}" for k in range(arch.num_items)))
    return ModelBundle(SASRec(arch), vocab)


def test_the_filter_architecture_round_trips_through_a_bundle(tmp_path: Path) -> None:
    bundle = _bundle(FILTER)
    bundle.save(tmp_path / "b")
    loaded = ModelBundle.load(tmp_path / "b")
    assert loaded.model.arch == FILTER
    histories = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]]
    torch.testing.assert_close(loaded.score_encoded(histories), bundle.score_encoded(histories))


def test_a_bundle_from_before_the_filter_loads_as_sasrec(tmp_path: Path) -> None:
    old = Architecture(30, 12, 16, 1, 2, 0.1)
    bundle = _bundle(old)
    bundle.save(tmp_path / "b")
    written = json.loads((tmp_path / "b" / ARCH_FILE).read_text())
    for key in (
        "encoder",
        "filter_alpha",
        "filter_cutoff",
        "relative_positions",
    ):  # as written before them
        del written[key]
    (tmp_path / "b" / ARCH_FILE).write_text(json.dumps(written))
    loaded = ModelBundle.load(tmp_path / "b")
    assert loaded.model.arch.encoder == ENCODER_SASREC and loaded.model.arch == old
    torch.testing.assert_close(loaded.score_encoded([[1, 2]]), bundle.score_encoded([[1, 2]]))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"filter_alpha": 1.5}, r"'filter_alpha' must be a number in \[0, 1\]"),
        ({"filter_alpha": "0.5"}, "'filter_alpha' must be a number"),
        ({"encoder": 3}, r"'encoder' must be an integer in 1..2"),
        ({"filter_cutoff": 0}, "the filter encoder needs filter_cutoff >= 1"),
    ],
)
def test_a_bad_filter_field_is_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(BundleError, match=message):
        Architecture.from_dict({**asdict(FILTER), **change})


def test_the_filter_encoder_trains_reproducibly(tmp_path: Path, small_features: Features) -> None:
    config = TINY_TRAINING.model_copy(
        update={"encoder": "filter", "relative_positions": True, "max_epochs": 2}
    )
    a = train(small_features, config, tmp_path / "a")
    b = train(small_features, config, tmp_path / "b")
    assert a.history == b.history and a.bundle.model.arch.encoder == ENCODER_FILTER
    assert a.bundle.model.arch.relative_positions == 1


WHOLE = replace(FILTER, relative_positions=0, whole_window=1)


def test_the_whole_window_filter_is_bsarecs_on_the_zero_padded_window() -> None:
    """Inputs at the end of a zero-padded max_len window: the filter the model applies to a
    trimmed input is BSARec's full low-pass restricted to the input's rows and columns."""
    torch.manual_seed(0)
    model = SASRec(WHOLE).eval()
    full = lowpass_matrix(WHOLE.max_len, WHOLE.filter_cutoff)
    x = torch.randn(5, 3)
    padded = torch.cat([torch.zeros(WHOLE.max_len - 5, 3), x])
    torch.testing.assert_close(model.lowpass[-5:, -5:] @ x, (full @ padded)[-5:])


def test_the_whole_window_lets_earlier_positions_see_later_items_and_trims_exactly() -> None:
    torch.manual_seed(0)
    model = SASRec(WHOLE).eval()
    items = [3, 4, 5, 6, 7, 8]
    seq = torch.tensor([[0] * (WHOLE.max_len - len(items)) + items])
    changed = seq.clone()
    changed[0, -1] = 20
    with torch.no_grad():
        a, b = model.encode(seq), model.encode(changed)
        trimmed = model.encode(torch.tensor([items]))
    # not causal: position -2 reads the last item (why it is only trained at the end)
    assert (a[0, -2] - b[0, -2]).abs().max() > 1e-3
    torch.testing.assert_close(trimmed[0], a[0, -len(items) :])  # padding changes nothing


def test_the_whole_window_needs_prefix_examples() -> None:
    with pytest.raises(ValueError, match="filter_window 'whole' needs examples: prefixes"):
        TrainConfig(encoder="filter", filter_window="whole")
    config = TrainConfig(encoder="filter", filter_window="whole", examples="prefixes")
    assert model_fields(config)["whole_window"] == 1


def test_a_whole_window_model_trains_on_prefixes_reproducibly(
    tmp_path: Path, small_features: Features
) -> None:
    config = TINY_TRAINING.model_copy(
        update={
            "encoder": "filter",
            "filter_window": "whole",
            "examples": "prefixes",
            "max_epochs": 2,
        }
    )
    a = train(small_features, config, tmp_path / "a")
    b = train(small_features, config, tmp_path / "b")
    assert a.history == b.history and a.bundle.model.arch.whole_window == 1
    a.bundle.save(tmp_path / "bundle")
    loaded = ModelBundle.load(tmp_path / "bundle")
    assert loaded.model.arch == a.bundle.model.arch
