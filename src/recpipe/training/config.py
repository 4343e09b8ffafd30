"""The trainer's hyperparameters."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from recpipe.core.config import StageConfig


class TrainConfig(StageConfig):
    """SASRec hyperparameters; the defaults are the benchmarked ones."""

    hidden_dim: int = Field(64, ge=8, le=4096)
    num_layers: int = Field(2, ge=1, le=48)
    num_heads: int = Field(2, ge=1, le=64)
    dropout: float = Field(0.5, ge=0, lt=1)
    use_item_attributes: bool = Field(
        True, description="Add attribute embeddings when the features carry item attributes."
    )
    learning_rate: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(0.0, ge=0, le=10)
    batch_size: int = Field(128, ge=1, le=65_536)
    max_epochs: int = Field(200, ge=1, le=100_000)
    patience: int = Field(
        10, ge=1, le=100_000, description="Epochs without a better valid NDCG@10."
    )
    max_train_minutes: float | None = Field(None, gt=0, le=100_000, description="Wall-clock cap.")
    seed: int = Field(42, ge=0, le=2**32 - 1, description="numpy takes 32-bit seeds.")
    checkpoint_uri: str | None = Field(
        None,
        description="Folder (local or gs://) that keeps the latest checkpoint, so a retried "
        "or restarted training task resumes instead of starting over.",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = Field(
        None, ge=1, le=1024, description="torch CPU threads; None = torch's default."
    )

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> TrainConfig:
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"hidden_dim ({self.hidden_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        return self
