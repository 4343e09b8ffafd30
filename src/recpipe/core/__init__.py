"""Foundation: storage (local and gs://), the config base, build settings. Imports nothing of recpipe."""
