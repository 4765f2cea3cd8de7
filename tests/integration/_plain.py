"""A user module that imports only the standard library (for env="off" tests)."""

import math


def triple(x: int) -> int:
    return int(math.fsum([x, x, x]))
