"""Item attributes: reading (good and bad files), the per-index table, the model's use of it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from recpipe.features.attributes import ItemAttributes, read_item_attributes
from recpipe.features.config import FeatureConfig
from recpipe.features.sequences import Features, Vocabulary, build_features
from recpipe.training.model import ARCH_FILE, Architecture, ModelBundle, SASRec
from recpipe.training.trainer import train
from tests.support import TINY_TRAINING


def test_json_csv_and_parquet_read_the_same(tmp_path: Path) -> None:
    mapping = {"a": ["brand-1", "cat-2"], "b": ["cat-2"], "c": []}
    (tmp_path / "attrs.json").write_text(json.dumps({**mapping, "d": [7, 7.0]}))
    rows = [(item, attr) for item, attrs in mapping.items() for attr in attrs]
    frame = pd.DataFrame([*rows, ("a", "cat-2")], columns=["item_id", "attribute"])
    frame.to_csv(tmp_path / "attrs.csv", index=False)
    frame.to_parquet(tmp_path / "attrs.parquet", index=False)
    from_json = read_item_attributes(str(tmp_path / "attrs.json"))
    assert from_json == {"a": ("brand-1", "cat-2"), "b": ("cat-2",), "c": (), "d": ("7",)}
    expected = {"a": ("brand-1", "cat-2"), "b": ("cat-2",)}  # duplicate pair dropped
    assert read_item_attributes(str(tmp_path / "attrs.csv")) == expected
    assert read_item_attributes(str(tmp_path / "attrs.parquet")) == expected


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.json", "[1, 2]", "expected a JSON object"),
        ("a.json", '{"x": "cat"}', "item 'x': attributes must be a list"),
        ("a.json", '{"x": [null]}', "item 'x', attribute 0: expected an id"),
        ("a.json", '{"x": [1.5]}', "item 'x', attribute 0: expected an id"),
        ("a.json", '{"x": [" "]}', "item 'x', attribute 0: empty id"),
        ("a.json", "{not json", "not valid JSON"),
        ("a.csv", "item,attr\nx,y\n", "missing column(s) ['item_id', 'attribute']"),
        ("a.csv", "item_id,attribute\nx,y\nz,\n", "row 3: empty attribute"),
        ("a.txt", "x", "must be .json, .csv(.gz) or .parquet"),
    ],
)
def test_bad_attribute_files_name_the_problem(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError) as err:
        read_item_attributes(str(path))
    assert message in str(err.value) and str(path) in str(err.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        read_item_attributes(str(tmp_path / "nope.json"))


def test_table_follows_the_vocabulary() -> None:
    vocab = Vocabulary(("b", "a", "c"))
    table = ItemAttributes.build(vocab, {"a": ("x", "y"), "b": ("y",), "zz": ("q",)})
    assert table.names == ("y", "x")  # numbered in vocabulary order; "zz" is not an item
    assert [table.of(i) for i in range(4)] == [[], ["y"], ["x", "y"], []]
    assert table.offsets.tolist() == [0, 0, 1, 3, 3] and table.values.tolist() == [0, 1, 0]
    assert ItemAttributes.from_json(table.to_json()).to_json() == table.to_json()
    assert table.stats() == {
        "num_attributes": 2,
        "items_with_attributes": 2,
        "catalogue_items": 3,
    }


def test_a_catalogue_that_barely_matches_the_events_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger="recpipe.features.attributes"):
        table = ItemAttributes.build(Vocabulary(("1", "2", "3")), {"1": ("x",), "x2": ("y",)}, "f")
    assert "only 1 of the events' 3 items have attributes (the file lists 2" in caplog.text
    assert table.stats()["items_with_attributes"] == 1 and table.stats()["catalogue_items"] == 2


def test_attributes_that_match_no_item_are_refused() -> None:
    with pytest.raises(ValueError, match="none of its 2 items is in the events' vocabulary"):
        ItemAttributes.build(Vocabulary(("1", "2")), {"sku-1": ("x",), "sku-2": ("y",)}, "f.json")


def test_catalogue_limits_name_the_item_and_the_field() -> None:
    vocab = Vocabulary(("a", "b"))
    with pytest.raises(ValueError, match=r"item 'b' has 3 attributes; the limit is 2"):
        ItemAttributes.build(vocab, {"a": ("x",), "b": ("x", "y", "z")}, "f.json", max_per_item=2)
    with pytest.raises(ValueError, match=r"3 distinct attributes; the limit is 2 \(features"):
        ItemAttributes.build(vocab, {"a": ("x", "y"), "b": ("z",)}, "f.json", max_attributes=2)


def test_features_carry_attributes_through_save_and_load(
    tmp_path: Path, small_features: Features
) -> None:
    assert small_features.attributes is not None
    assert small_features.stats()["items_with_attributes"] == small_features.num_items
    small_features.save(tmp_path)
    loaded = Features.load(tmp_path)
    assert loaded.attributes is not None
    assert loaded.attributes.to_json() == small_features.attributes.to_json()


def test_item_vector_is_own_plus_mean_of_attributes() -> None:
    vocab = Vocabulary(("a", "b", "c"))
    attrs = ItemAttributes.build(vocab, {"a": ("x", "y"), "b": ("y",)})
    arch = Architecture(3, 4, 8, 1, 1, 0.0, attrs.num_attributes, attrs.num_links)
    model = SASRec(arch, attrs).eval()
    assert model.attr_emb is not None
    own, av = model.item_emb.weight.detach().clone(), model.attr_emb.weight.detach().clone()
    x, y = attrs.names.index("x"), attrs.names.index("y")
    expected = torch.stack([own[0], own[1] + (av[x] + av[y]) / 2, own[2] + av[y], own[3]])
    with torch.no_grad():
        assert torch.allclose(model.item_table(), expected)
        # the inference cache follows in-place weight updates (an optimizer step, a load)
        model.attr_emb.weight.add_(1.0)
        assert torch.allclose(model.item_table()[2], own[2] + av[y] + 1.0)
    assert model.item_table().requires_grad  # with gradients: computed, never the cache


def test_attribute_model_round_trips_and_old_bundles_still_load(
    tmp_path: Path, tiny_bundle: ModelBundle, small_features: Features
) -> None:
    assert tiny_bundle.model.arch.num_attributes > 0  # the default trainer uses them
    tiny_bundle.save(tmp_path / "m")
    loaded = ModelBundle.load(tmp_path / "m")
    histories = [s[:-1] for s in small_features.sequences[:8]]
    assert torch.equal(loaded.score_encoded(histories), tiny_bundle.score_encoded(histories))

    plain = train(
        small_features,
        TINY_TRAINING.model_copy(update={"use_item_attributes": False, "max_epochs": 1}),
        tmp_path / "w",
    ).bundle
    assert plain.model.attr_emb is None and plain.model.arch.num_attributes == 0
    plain.save(tmp_path / "old")
    arch = json.loads((tmp_path / "old" / ARCH_FILE).read_text())
    for key in ("num_attributes", "num_attribute_links"):  # as written before attributes
        arch.pop(key)
    (tmp_path / "old" / ARCH_FILE).write_text(json.dumps(arch))
    old = ModelBundle.load(tmp_path / "old")
    assert torch.equal(old.score_encoded(histories), plain.score_encoded(histories))


def test_training_updates_attribute_embeddings(small_features: Features) -> None:
    """The loss reaches the attribute vectors through both the input and the output side."""
    attrs = small_features.attributes
    assert attrs is not None
    arch = Architecture(
        small_features.num_items, 20, 16, 1, 1, 0.0, attrs.num_attributes, attrs.num_links
    )
    model = SASRec(arch, attrs).train()
    assert model.attr_emb is not None
    seqs = torch.tensor([[0, 0, 1, 2], [3, 4, 5, 6]])
    targets = torch.tensor([[0, 0, 2, 3], [4, 5, 6, 7]])
    loss = torch.nn.functional.cross_entropy(
        model.training_logits(seqs, targets), targets[targets != 0]
    )
    loss.backward()
    grad = model.attr_emb.weight.grad
    assert grad is not None and int((grad.abs().sum(dim=1) > 0).sum()) > 1


def test_attributes_are_read_from_gcs(gcs_bucket: str) -> None:
    from recpipe.core import storage

    uri = f"gs://{gcs_bucket}/catalogue/item_attributes.json"
    storage.write_bytes(uri, json.dumps({"a": ["x"], "b": ["x", "y"]}).encode())
    assert read_item_attributes(uri) == {"a": ("x",), "b": ("x", "y")}
    with pytest.raises(FileNotFoundError, match="missing"):
        read_item_attributes(f"gs://{gcs_bucket}/catalogue/missing.json")


def test_attribute_file_size_is_checked_before_parsing(tmp_path: Path) -> None:
    """Stored size, gzip output and Parquet columns each within max_attributes_bytes, and the
    limit reaches the feature step through FeatureConfig."""
    big = tmp_path / "a.json"
    big.write_text(json.dumps({f"item{i}": ["x"] for i in range(1_000)}))
    with pytest.raises(
        ValueError, match=r"a\.json'? is \d+ bytes, over the limit of 1000 .*max_attributes_bytes"
    ):
        read_item_attributes(str(big), max_bytes=1_000)
    assert len(read_item_attributes(str(big), max_bytes=100_000)) == 1_000

    bomb = tmp_path / "a.csv.gz"
    bomb.write_bytes(gzip.compress(b"item_id,attribute\n" + b"a,x\n" * 2_000_000))
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ValueError, match=r"decompresses to more than 1,000,000 bytes"):
        read_item_attributes(str(bomb), max_bytes=1_000_000)

    wide = tmp_path / "a.parquet"
    pd.DataFrame({"item_id": ["a"] * 500, "attribute": ["y" * 2_000] * 500}).to_parquet(
        wide, index=False, compression="zstd", use_dictionary=False
    )
    assert wide.stat().st_size < 50_000
    with pytest.raises(
        ValueError, match=r"its 500 rows decompress to [\d,]+ bytes, more than 500,000"
    ):
        read_item_attributes(str(wide), max_bytes=500_000)

    events = pd.DataFrame(
        {"user_id": ["u"] * 3, "item_id": ["item1", "item2", "item3"], "timestamp": [1, 2, 3]}
    )
    config = FeatureConfig(item_attributes_uri=str(big), max_attributes_bytes=1_000)
    with pytest.raises(ValueError, match=r"features\.max_attributes_bytes"):
        build_features(events, config)
    assert build_features(
        events, config.model_copy(update={"max_attributes_bytes": 1 << 20})
    ).attributes


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("a.json", json.dumps({"k" * 1_000_000: ["x"], "b": "not a list"})),
        ("a.json", json.dumps({"a": [{"nested": "z" * 1_000_000}]})),
        ("a.json", "[" * 100_000 + "]" * 100_000),
        ("a.json", '{"a": [' + "9" * 5_000 + "]}"),
        ("a.csv", f"item_id,{'c' * 1_000_000}\nx,y\n"),
    ],
)
def test_attribute_errors_do_not_echo_the_file(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError) as err:
        read_item_attributes(str(path))
    assert str(path) in str(err.value) and len(str(err.value)) < 1_000, str(err.value)[:300]


def test_catalogue_errors_cut_long_ids() -> None:
    with pytest.raises(ValueError, match=r"none of its 1 items") as err:
        ItemAttributes.build(Vocabulary(("a",)), {"z" * 1_000_000: ("x",)}, "f.json")
    assert len(str(err.value)) < 1_000
