"""``python -m digits``: the command line (see ``digits.cli``)."""

from digits.cli import main

raise SystemExit(main())
