"""The bad-input corpus of the validation gate (see cases.py)."""
