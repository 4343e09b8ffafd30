"""Raw events: the event contract, reading files and partitions, synthetic samples, the watermark."""
