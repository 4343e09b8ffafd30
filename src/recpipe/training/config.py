"""The trainer's hyperparameters."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from recpipe.core.config import StageConfig

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$"


class DistributedConfig(StageConfig):
    """Training as one job of several torchrun processes (DDP) on a Kubeflow cluster.

    The pipeline's train step submits it (a Kubeflow Trainer v2 TrainJob, or a PyTorchJob
    on clusters with the older Training Operator: `api`) and waits; the
    processes split every global batch, so the model is the one a single process would
    train, only sooner (see recpipe.training.distributed)."""

    nodes: int = Field(2, ge=1, le=512, description="Pods (machines) of the job.")
    procs_per_node: int = Field(
        1, ge=1, le=64, description="torchrun processes per pod: its GPUs, or 1 on CPU nodes."
    )
    api: Literal["trainjob", "pytorchjob"] = Field(
        "trainjob",
        description="The cluster's job API: 'trainjob' (Kubeflow Trainer v2, "
        "trainer.kubeflow.org/v1alpha1) or 'pytorchjob' (the older Training Operator, "
        "kubeflow.org/v1). Chosen, not detected: a retried step finds the job it submitted.",
    )
    runtime: str = Field(
        "torch-distributed",
        pattern=DNS_LABEL,
        description="The ClusterTrainingRuntime the TrainJob references (api: trainjob only).",
    )
    namespace: str = Field("kubeflow", pattern=DNS_LABEL)
    service_account: str | None = Field(
        None, pattern=DNS_LABEL, description="Pods' identity (GCS access via Workload Identity)."
    )
    image: str | None = Field(
        None, max_length=500, description="None: the trainer image the pipeline was compiled with."
    )
    work_uri: str = Field(
        ...,
        pattern=r"^gs://[a-z0-9][-_.a-z0-9]{1,220}[a-z0-9](/\S*)?$",
        description="gs:// folder every pod reads and writes: checkpoints (unless "
        "checkpoint_uri is set) and the trained model, under the job's name.",
    )
    cpu: str = Field("4", pattern=QUANTITY, max_length=20, description="Per pod.")
    memory: str = Field("16Gi", pattern=QUANTITY, max_length=20, description="Per pod.")
    gpus: int = Field(0, ge=0, le=64, description="Per pod; > 0 trains with NCCL on CUDA.")
    accelerator: str = Field("nvidia.com/gpu", min_length=1, max_length=253)
    max_restarts: int = Field(
        3,
        ge=0,
        le=100,
        description="torchrun --max-restarts: a failed worker restarts its group, which "
        "resumes from the latest checkpoint.",
    )
    timeout_minutes: float = Field(1440, gt=0, le=100_000, description="Then the job fails.")
    poll_seconds: float = Field(20, ge=0.01, le=3600)

    @model_validator(mode="after")
    def _gpus_per_process(self) -> DistributedConfig:
        if self.gpus and self.gpus != self.procs_per_node:
            raise ValueError(
                f"procs_per_node ({self.procs_per_node}) must equal gpus ({self.gpus}): "
                "one NCCL process per GPU"
            )
        return self


class ItemIndexConfig(StageConfig):
    """The faiss index written next to the model at bundle time (serving.index): an IVF
    over the item table, its nprobe raised until recall@10 against exact search on held-out
    users' vectors reaches `target_recall` (what is reached is recorded in the manifest)."""

    min_items: int | None = Field(
        100_000,
        ge=1,
        le=1_000_000_000,
        description="Build it for catalogues of at least this many items; None: never.",
    )
    nlist: int | None = Field(
        None, ge=1, le=1_000_000, description="IVF lists; None: 4 x sqrt(items)."
    )
    target_recall: float = Field(0.95, gt=0, le=1, description="recall@10 nprobe must reach.")
    recall_queries: int = Field(
        1000, ge=10, le=100_000, description="Held-out users whose vectors measure recall."
    )
    max_nprobe: int = Field(1024, ge=1, le=1_000_000, description="Tuning stops here.")


class TrainConfig(StageConfig):
    """Model and training hyperparameters; the defaults are the benchmarked ones."""

    encoder: Literal["sasrec", "filter"] = Field(
        "sasrec",
        description="'filter': BSARec's frequency-filter + attention block (made causal); "
        "'sasrec': plain SASRec.",
    )
    filter_alpha: float = Field(
        0.7, ge=0, le=1, description="Weight of the frequency filter against attention."
    )
    filter_cutoff: int = Field(
        5, ge=1, le=8192, description="BSARec's c: the filter keeps rfft bins 0..c // 2."
    )
    filter_window: Literal["causal", "whole"] = Field(
        "causal",
        description="'whole': BSARec's own filter, a low-pass over the whole input window "
        "(earlier positions see later input items; only right with examples: prefixes, "
        "where the loss is at the last position); 'causal': position t sees items <= t.",
    )
    examples: Literal["sequences", "prefixes"] = Field(
        "sequences",
        description="'sequences': one example per user, a next-item target at every position; "
        "'prefixes': one example per prefix of a user's training items, its next item the "
        "target at the last position only (BSARec's and FMLP-Rec's protocol).",
    )
    relative_positions: bool = Field(
        False,
        description="Attention biased by distance instead of position embeddings (filter "
        "encoder): every position is trained as a prediction at the end of its prefix.",
    )
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
    distributed: DistributedConfig | None = Field(
        None,
        description="Train as a distributed job on the cluster (None: in the step's own pod).",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="torch CPU threads; None = the CPUs the container is given (cgroup "
        "quota and affinity, core.cpus).",
    )

    loss: Literal["auto", "full", "sampled"] = Field(
        "auto",
        description="'full': softmax over every item; 'sampled': in-batch and sampled "
        "negatives with logQ correction (training.losses); 'auto': sampled from "
        "sampled_loss_min_items items on.",
    )
    sampled_loss_min_items: int = Field(
        100_000,
        ge=1,
        le=1_000_000_000,
        description="'auto' switches to sampled softmax at this many items: full logits of a "
        "128 x 50 batch are 2.6 GB here, x3 with softmax and gradient.",
    )
    num_negatives: int = Field(
        256, ge=0, le=1_000_000, description="Sampled negatives shared by a batch's positions."
    )
    negative_sampling: Literal["uniform", "popularity"] = Field(
        "uniform", description="Proposal of the sampled negatives (in-batch ones follow popularity)."
    )
    in_batch_negatives: bool = Field(
        True, description="The batch's other targets are negatives too (sampled loss)."
    )
    item_index: ItemIndexConfig = Field(
        default_factory=lambda: ItemIndexConfig(),
        description="Approximate top-k index shipped in the bundle for large catalogues.",
    )

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> TrainConfig:
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"hidden_dim ({self.hidden_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.filter_window == "whole" and self.examples != "prefixes":
            # every position trained at once would see the items it must predict
            raise ValueError("filter_window 'whole' needs examples: prefixes")
        return self
