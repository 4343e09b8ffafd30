"""The bad-input corpus: every broken input stops the gate with the message it must produce."""

import re
from pathlib import Path

import pytest

from recpipe.core import storage
from recpipe.validation.drift import save_stats
from recpipe.validation.gate import GateResult, validate_events
from tests.validation.corpus.cases import CASES, Case


def _check(case: Case, root: str, stats_uri: str) -> GateResult:
    uri = case.build(root)
    if isinstance(case.previous, str):
        storage.write_bytes(stats_uri, case.previous.encode())
    elif case.previous is not None:
        save_stats(stats_uri, case.previous)
    result = validate_events(uri, case.config, case.source, stats_uri=stats_uri)
    md = result.markdown()
    assert len(md) < 20_000, f"{case.name}: a {len(md):,}-character report echoes its input"
    for pattern in case.expect:
        assert re.search(pattern, md, re.S), f"{case.name}: /{pattern}/ not in\n{md}"
    if case.severity == "hard":
        assert not result.passed and result.events is None, md
        assert result.stats is None
    else:
        assert result.passed and result.warnings and result.events is not None, md
    assert "<html" in result.data_docs_html.lower()
    return result


def test_corpus_is_large_and_named() -> None:
    names = [c.name for c in CASES]
    assert len(names) == len(set(names)) >= 15
    assert sum(c.severity == "hard" for c in CASES) >= 15


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_corpus_case(case: Case, tmp_path: Path) -> None:
    _check(case, str(tmp_path / "in"), str(tmp_path / "stats.json"))


def test_corpus_cases_on_gcs(gcs_bucket: str) -> None:
    """The same inputs under a gs:// prefix (a real GCS emulator): same messages, gs:// named."""
    for name in ("empty_prefix", "truncated_gzip", "volume_collapse"):
        case = next(c for c in CASES if c.name == name)
        result = _check(case, f"gs://{gcs_bucket}/{name}", f"gs://{gcs_bucket}/stats/{name}.json")
        assert f"gs://{gcs_bucket}/{name}" in result.markdown()
