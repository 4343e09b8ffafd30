"""`recpipe rollout ...` (shim: the argparse code moves here from the library)."""

from recpipe.rollout.canary import add_rollout_commands as add_commands

__all__ = ["add_commands"]
