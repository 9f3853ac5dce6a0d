"""``python -m relay run ...``: the relay without the console script (used by the demo)."""

from relay.cli import relay_group

relay_group(prog_name="python -m relay")
