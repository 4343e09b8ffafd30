"""`recpipe kfp ...` (shim: the argparse code moves here from the library)."""

from recpipe.kfp.client import add_kfp_commands as add_commands

__all__ = ["add_commands"]
