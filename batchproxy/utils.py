import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from itertools import islice


def batched(items: Iterable, size: int) -> Iterator[tuple]:
    """itertools.batched, which arrives only in Python 3.12."""
    iterator = iter(items)
    while chunk := tuple(islice(iterator, size)):
        yield chunk


_random = threading.local()
_VERSION_4 = uuid.UUID(int=0, version=4).int  # the version and variant bits
# A forked process (gunicorn's workers) must not go on from its parent's bytes.
os.register_at_fork(after_in_child=lambda: _random.__dict__.clear())


def uuid4() -> uuid.UUID:
    """A random (version 4) UUID, as `uuid.uuid4()` makes, from os.urandom read 4 KB at a
    time in each thread. `uuid.uuid4()` makes a system call per id, which lets go of the GIL;
    on a busy web worker each such call then waits for the GIL to come back."""
    at = getattr(_random, "at", 4096)
    if at == 4096:
        _random.pool, at = os.urandom(4096), 0
    _random.at = at + 16
    bits = int.from_bytes(_random.pool[at : at + 16]) & ~(0xF000 << 64 | 0xC << 60) | _VERSION_4
    return uuid.UUID(int=bits)
