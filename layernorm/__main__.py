"""Entry point of ``python -m layernorm``."""

import sys

from layernorm.cli import main

sys.exit(main())
