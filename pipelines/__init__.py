"""Pipeline definitions (KFP v2), the whole run's config and compiling them to IR YAML."""
