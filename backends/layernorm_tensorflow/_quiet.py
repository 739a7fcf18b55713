"""Keep TensorFlow's C++ start-up INFO logs off the user's terminal when this backend is what imports it.

TensorFlow reads ``TF_CPP_MIN_LOG_LEVEL`` once, when it is first imported. If the user already set it, or already
imported TensorFlow (and so already saw or chose its logs), nothing changes. Otherwise it is set to "1": INFO lines
(XLA service start-up, "Compiled cluster using XLA!", CPU feature notes) are hidden; warnings and errors still show.
TensorFlow 2.16 and 2.18 print XLA's start-up INFO lines whatever the variable says (2.21 honours it).
"""

from __future__ import annotations

import os
import sys

ENV_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
QUIET_LEVEL = "1"


def quiet_tensorflow_logs() -> None:
    """Set TF_CPP_MIN_LOG_LEVEL=1 unless the user set it or tensorflow is already imported."""
    if "tensorflow" not in sys.modules:
        os.environ.setdefault(ENV_VARIABLE, QUIET_LEVEL)
