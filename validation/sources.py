"""Built-in event sources, and resolving `--source NAME_OR_FILE`.

A source (recpipe.events.config.SourceConfig) declares where its files are, how its columns map
onto the event contract, and its cleaning policy. The built-in ones are Python values so
they ship inside the package and the images; a user's own source is a YAML/JSON file:

    name: my-shop
    uri: gs://bucket/events/            # many partition files are fine
    format: parquet
    columns: {user_id: customer, item_id: sku, timestamp: ts, event_type: action}
    cleaning:
      - {rule: drop_missing, column: user_id, reason: anonymous sessions}
"""

from __future__ import annotations

from pathlib import Path

from recpipe.core.config import ConfigError, load_config
from recpipe.events.config import CleaningRule, SourceConfig

EVENTS = SourceConfig()

AMAZON_BEAUTY = SourceConfig(
    name="amazon-beauty",
    uri="../shared/data/amazon-beauty/events.csv",
    defaults={"event_type": "review"},
    id_patterns={"user_id": r"[0-9]+", "item_id": r"[0-9]+"},
)

# UCI Online Retail: invoice lines of a UK shop, dirty the way real event data is.
ONLINE_RETAIL = SourceConfig(
    name="online-retail",
    uri="../shared/data/online-retail/transactions.csv.gz",
    columns={
        "user_id": "CustomerID",
        "item_id": "StockCode",
        "timestamp": "InvoiceDate",
        "quantity": "Quantity",
        "price": "UnitPrice",
        "session_id": "InvoiceNo",
    },
    defaults={"event_type": "purchase"},
    timestamp_format="%Y-%m-%d %H:%M:%S",
    float_text_ids=True,
    id_patterns={"user_id": r"[0-9]{5}", "item_id": r"[0-9]{5}[A-Za-z]{0,2}"},
    cleaning=(
        CleaningRule(rule="drop_duplicates", reason="exact duplicate invoice lines"),
        CleaningRule(
            rule="drop_prefix",
            column="session_id",
            values=("C",),
            reason="cancellations (invoice number starts with C)",
        ),
        CleaningRule(rule="drop_missing", column="user_id", reason="no CustomerID (guest)"),
        CleaningRule(
            rule="keep_matching",
            column="item_id",
            pattern=r"[0-9]{5}[A-Za-z]{0,2}",
            reason="non-product stock codes (POST, DOT, M, BANK CHARGES, gift vouchers, ...)",
        ),
        CleaningRule(
            rule="drop_at_most", column="quantity", threshold=0, reason="zero/negative quantity"
        ),
        CleaningRule(
            rule="drop_at_most", column="price", threshold=0, reason="zero/negative price"
        ),
    ),
)

BUILTIN: dict[str, SourceConfig] = {s.name: s for s in (EVENTS, AMAZON_BEAUTY, ONLINE_RETAIL)}


def resolve_source(name_or_path: str | None) -> SourceConfig:
    """A built-in source by name, or a SourceConfig YAML/JSON file; None: the plain contract."""
    if name_or_path is None:
        return EVENTS
    if name_or_path in BUILTIN:
        return BUILTIN[name_or_path]
    path = Path(name_or_path)
    if path.suffix.lower() in (".yaml", ".yml", ".json") or path.exists():
        source = load_config(path, SourceConfig)
        if source.uri and not source.uri.startswith("gs://") and not Path(source.uri).is_absolute():
            # a relative `uri` in a file is relative to that file, not to the caller's cwd
            source = source.model_copy(update={"uri": str(path.parent / source.uri)})
        return source
    raise ConfigError(
        f"unknown source {name_or_path!r}: not a built-in ({', '.join(BUILTIN)}) "
        "and not a YAML/JSON file"
    )
