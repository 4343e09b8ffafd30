"""The data-arrival trigger: what it watches and which run it starts."""

from __future__ import annotations

from pydantic import Field, model_validator

from recpipe.core.config import StageConfig
from recpipe.kfp.config import KfpConnection

BUCKET_PATTERN = r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$"  # a GCS bucket name
RunParameter = str | int | float | bool


GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"


class PushAuthConfig(StageConfig):
    """Who may deliver notifications: each Pub/Sub (or Eventarc) push carries a Google-signed
    OIDC token for the subscription's service account; anything else is answered 401."""

    audience: str = Field(
        ...,
        min_length=1,
        description="The push subscription's audience (there: --push-auth-"
        "token-audience, default the endpoint URL).",
    )
    service_account: str = Field(
        ...,
        pattern=r"^[^@\s]+@[^@\s]+$",
        description="Email of the service account the subscription signs its tokens as.",
    )
    certs_url: str = Field(GOOGLE_CERTS_URL, description="Google's token signing certificates.")
    certs_cache_s: float = Field(
        300.0, ge=0, le=86_400, description="How long fetched certificates are reused."
    )


class TriggerConfig(StageConfig):
    """The data-arrival trigger: which objects it watches, when a partition is complete,
    where its dedup state lives and which KFP run it starts (one per partition)."""

    bucket: str = Field(..., pattern=BUCKET_PATTERN, description="Watched bucket.")
    prefix: str = Field(
        "events/",
        pattern=r"^([^/].*/)?$",
        description="Watched prefix ('' or ending in '/'); partitions are its sub-folders.",
    )
    marker_name: str = Field(
        "_SUCCESS", min_length=1, pattern=r"^[^/]+$", description="Object that completes one."
    )
    quiet_period_s: float | None = Field(
        None,
        gt=0,
        le=30 * 86_400,
        description="Also complete a partition after this long without new objects in it; "
        "None: only the marker does.",
    )
    sweep_interval_s: float = Field(
        30.0, gt=0, le=3_600, description="How often pending partitions are checked for quiet."
    )
    state_uri: str = Field(
        ...,
        pattern=r"^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/.*)?$",
        description="gs:// prefix of the dedup markers (shared by replicas and restarts).",
    )
    claim_timeout_s: float = Field(
        600.0,
        gt=0,
        le=7 * 86_400,
        description="A run claim older than this whose run id was never recorded (the replica "
        "died mid-launch) may be taken over.",
    )
    push_auth: PushAuthConfig | None = Field(
        None,
        description="Verify the OIDC token of every push; required unless `insecure: true`.",
    )
    insecure: bool = Field(
        False,
        strict=True,
        description="Accept unauthenticated notifications (only behind a gateway that "
        "authenticates them); must be set to true in so many words when push_auth is not set.",
    )
    pipeline_name: str = Field("recpipe-training", min_length=1)
    pipeline_version: str | None = Field(None, min_length=1, description="None: the newest.")
    experiment: str = Field("recpipe-on-arrival", min_length=1)
    data_uri_parameter: str = Field(
        "data_uri", min_length=1, description="Run parameter set to gs://bucket/partition/."
    )
    run_parameters: dict[str, RunParameter] = Field(
        default_factory=dict, description="Fixed parameters of every run (registry_uri, ...)."
    )
    kfp: KfpConnection = Field(
        default_factory=lambda: KfpConnection(
            host="http://ml-pipeline.kubeflow.svc.cluster.local:8888", auth="in_cluster"
        ),
        description="Where the KFP API is and how to authenticate (host, namespace, auth, ...).",
    )

    @model_validator(mode="after")
    def _authenticated_or_explicitly_insecure(self) -> TriggerConfig:
        """Fail closed: anyone who can reach the endpoint could otherwise start runs."""
        if self.push_auth is None and not self.insecure:
            raise ValueError(
                "push_auth is required (who may deliver notifications); set `insecure: true` "
                "instead only if a gateway in front of the trigger authenticates them"
            )
        if self.push_auth is not None and self.insecure:
            raise ValueError("push_auth and `insecure: true` contradict each other: set one")
        return self

    @model_validator(mode="after")
    def _data_uri_not_fixed(self) -> TriggerConfig:
        if self.data_uri_parameter in self.run_parameters:
            raise ValueError(
                f"run_parameters must not set {self.data_uri_parameter!r}: "
                "the trigger sets it to the partition"
            )
        return self
