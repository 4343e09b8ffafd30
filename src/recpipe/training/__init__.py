"""Training: the SASRec model, its bundle and the trainer."""
