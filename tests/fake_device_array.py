"""An array of another framework on a CUDA device, for the tests of arrays that cannot cross to the host."""

from __future__ import annotations

import numpy as np


class FakeCudaTensor:
    """An array of another framework on a CUDA device that no engine here can import (no GPU here)."""

    dtype = np.dtype(np.float32)
    shape = (2,)

    def __dlpack__(self, **kwargs: object) -> object:
        raise BufferError("no such device")

    def __dlpack_device__(self) -> tuple[int, int]:
        return (2, 0)  # kDLCUDA

    def __array__(self, *args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("a device array must not be copied through the host silently")
