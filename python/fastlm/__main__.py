"""``python -m fastlm``: the ``fastlm`` command line (see :mod:`fastlm.cli`)."""
from .cli import main

raise SystemExit(main())
