"""asyncio: the queue's calls as coroutines (AsyncQueue) and an async producer (aconnect)."""

from walq.aio.producer import AsyncProducer, aconnect
from walq.aio.queue import AsyncQueue

__all__ = ["AsyncProducer", "AsyncQueue", "aconnect"]
