"""recpipe: raw events -> validation -> features -> training -> evaluation -> push -> serving."""

__version__ = "0.1.0"
