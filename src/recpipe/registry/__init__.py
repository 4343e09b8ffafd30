"""The model registry: content-addressed versions and the production pointer."""
