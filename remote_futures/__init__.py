"""remote_futures: a ``concurrent.futures`` executor whose calls run on a cluster.

>>> from remote_futures import RemoteExecutor
>>> with RemoteExecutor() as ex:                 # the embedded ``local`` transport
...     print(list(ex.map(abs, [-1, -2])))
[1, 2]

The same code runs on SLURM, PBS or SGE over SSH (``RemoteExecutor("slurm", host=...)``), or on a
plain SSH host, by changing the target; futures are standard ``concurrent.futures.Future``
objects that asyncio code can also ``await``.
"""

from .errors import (
    BrokenRemoteExecutor,
    ConfigurationError,
    JobFailedError,
    OutcomeUnavailableError,
    RemoteEnvironmentError,
    RemoteFuturesError,
    RemoteTraceback,
    SerializationError,
    SubmissionError,
    TransportError,
    WorkerDiedError,
)
from .executor import RemoteExecutor, RemoteFuture, ResourceView
from .resources import Resources

__all__ = [
    "BrokenRemoteExecutor",
    "ConfigurationError",
    "JobFailedError",
    "OutcomeUnavailableError",
    "RemoteEnvironmentError",
    "RemoteExecutor",
    "RemoteFuture",
    "RemoteFuturesError",
    "RemoteTraceback",
    "ResourceView",
    "Resources",
    "SerializationError",
    "SubmissionError",
    "TransportError",
    "WorkerDiedError",
]

__version__ = "0.1.0"
