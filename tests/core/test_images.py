"""Build settings: image tags name a version and a commit, never `latest`."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from recpipe.core.images import BuildSettings


def test_release_tags_name_version_and_commit_and_latest_is_refused() -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    env = {"RECPIPE_IMAGE_REGISTRY": "ghcr.io/shop", "RECPIPE_IMAGE_TAG": f"v1.2.0-{sha}"}
    build = BuildSettings.from_env(env)
    assert build.predictor_image == f"ghcr.io/shop/recpipe-predictor:v1.2.0-{sha}"
    default = BuildSettings.from_env({"RECPIPE_CODE_VERSION": "1.2.0+g0123456789ab"})
    assert default.tag == "1.2.0-g0123456789ab"  # version + commit, a valid Docker tag
    for bad in ("latest", "LATEST", "v1 2", "-x", "a" * 129):
        with pytest.raises(ValidationError, match="tag"):
            BuildSettings.from_env({"RECPIPE_IMAGE_TAG": bad})
