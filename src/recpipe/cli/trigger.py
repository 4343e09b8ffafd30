"""`recpipe trigger ...` (shim: the argparse code moves here from the library)."""

from recpipe.trigger.service import add_trigger_commands as add_commands

__all__ = ["add_commands"]
