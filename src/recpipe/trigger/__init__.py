"""Operations: the data-arrival trigger service and its Kubernetes manifests."""
