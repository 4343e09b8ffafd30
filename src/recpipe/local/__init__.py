"""Local runs: the pipeline under kfp.local and the demo."""
