"""Operations on Kubeflow Pipelines: the REST client (upload, submit, schedule)."""
