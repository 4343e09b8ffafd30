"""The event contract: the canonical shape every raw-event source is mapped onto."""

from __future__ import annotations

import typing
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_ID_LENGTH = 256
EVENT_TYPES: tuple[str, ...] = (
    "interaction",
    "view",
    "click",
    "add_to_cart",
    "purchase",
    "review",
    "rating",
)


class Event(BaseModel):
    """One interaction event: the canonical contract every source is mapped onto."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    user_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH, description="Who; kept exactly.")
    item_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH, description="What; kept exactly.")
    timestamp: int = Field(description="When, in unix seconds (UTC).")
    event_type: str = Field(description=f"What happened, one of {', '.join(EVENT_TYPES)}.")
    quantity: float | None = Field(None, gt=0, description="Units, for purchases and carts.")
    price: float | None = Field(None, ge=0, description="Unit price.")
    session_id: str | None = Field(None, description="Session, basket or invoice.")
    category: str | None = Field(None, description="Item category.")


Kind = Literal["string", "timestamp", "number"]
_KIND_OF: dict[object, Kind] = {str: "string", int: "timestamp", float: "number"}


def _kind(annotation: object) -> Kind:
    """str -> string, int -> timestamp (unix seconds), float -> number; Optional unwrapped."""
    base = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    return _KIND_OF[base[0]]


FIELDS: tuple[str, ...] = tuple(Event.model_fields)
REQUIRED_COLUMNS: tuple[str, ...] = tuple(
    n for n, f in Event.model_fields.items() if f.is_required()
)
KINDS: dict[str, Kind] = {n: _kind(f.annotation) for n, f in Event.model_fields.items()}
STRING_FIELDS: tuple[str, ...] = tuple(n for n in FIELDS if KINDS[n] == "string")
NUMBER_FIELDS: tuple[str, ...] = tuple(n for n in FIELDS if KINDS[n] == "number")

USER = "user_id"
ITEM = "item_id"
TIMESTAMP = "timestamp"
EVENT_TYPE = "event_type"
QUANTITY = "quantity"
PRICE = "price"
SESSION = "session_id"
CATEGORY = "category"
assert FIELDS == (USER, ITEM, TIMESTAMP, EVENT_TYPE, QUANTITY, PRICE, SESSION, CATEGORY)
