"""What ``logging`` shows: remote_futures speaks at INFO, the libraries under it stay quiet.

At INFO, ``remote_futures`` logs one line per event worth knowing (a job submitted and its id,
an environment being installed and how many distributions, a call retried). The libraries it
drives log far more at INFO (asyncssh logs every channel it opens, about 230 lines for one small
run), so their loggers are set to WARNING when an executor is made, unless the user set a
level on them already: ``logging.getLogger("asyncssh").setLevel(logging.INFO)`` (before or
after) brings their lines back.
"""

from __future__ import annotations

import logging

__all__ = ["THIRD_PARTY_LOGGERS", "quiet_third_party"]

#: Loggers of the libraries the transports use, quietened to WARNING unless configured.
THIRD_PARTY_LOGGERS = (
    "asyncssh",
    "aiobotocore",
    "aioboto3",
    "botocore",
    "boto3",
    "kubernetes",
    "kubernetes_asyncio",
    "urllib3",
)


def quiet_third_party() -> None:
    """Set each of :data:`THIRD_PARTY_LOGGERS` to WARNING if nobody set its level yet."""
    for name in THIRD_PARTY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)
