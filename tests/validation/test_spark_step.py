"""The validation step's engine switch: input bytes against validation.spark_min_bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from recpipe.core.config import ConfigError
from recpipe.validation.config import ValidationConfig
from recpipe.validation.spark_step import engine_name, input_bytes


def test_input_bytes_counts_event_files_only(tmp_path: Path) -> None:
    (tmp_path / "part-0.csv").write_text("user_id,item_id,timestamp\nu,i,1\n")
    (tmp_path / "part-1.csv").write_text("user_id,item_id,timestamp\n")
    (tmp_path / "_SUCCESS").write_text("x" * 1000)  # not an event file
    assert input_bytes(str(tmp_path)) == 32 + 26
    assert input_bytes(str(tmp_path / "missing")) == 0


def test_engine_by_size_or_config(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text("user_id,item_id,timestamp\n" + "u,i,1\n" * 100)
    assert engine_name(str(tmp_path), ValidationConfig()) == "pandas"
    assert engine_name(str(tmp_path), ValidationConfig(spark_min_bytes=100)) == "spark"
    assert engine_name(str(tmp_path), ValidationConfig(engine="pandas", spark_min_bytes=1)) == "pandas"
    with pytest.raises(ConfigError, match="engine"):
        ValidationConfig.from_json('{"engine": "polars"}')
