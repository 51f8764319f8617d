"""``python -m loopml.cli``: the same as the ``loopml`` command (the retraining schedule starts it this way)."""

from loopml.cli import main

main()
