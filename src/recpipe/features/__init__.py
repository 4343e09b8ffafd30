"""Features: vocabulary, stable ordering, sequences, leave-one-out split, item attributes."""
