"""Entry point for ``python -m tatk`` and ``python tatk`` (what ``accelerate launch tatk ...`` runs).

``python tatk`` executes this file with the *package folder* first on ``sys.path``; swap it for the
repository root so ``import tatk`` finds the package and nothing inside it shadows an installed module.
"""

import os
import sys

if not __package__:
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.path.insert(0, os.path.dirname(here))

from tatk.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
