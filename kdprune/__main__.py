"""``python -m kdprune`` (and ``torchrun ... -m kdprune train``) runs the CLI."""
import sys

from kdprune.cli import main

sys.exit(main())
