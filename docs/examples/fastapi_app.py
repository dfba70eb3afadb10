"""A FastAPI app that enqueues walq jobs from its request handlers.

Run it beside a queue directory (an owner, e.g. `walq worker`, may run or not:
without one the jobs wait durably in the spool):

    pip install fastapi uvicorn
    WALQ_DIR=/tmp/app-queue uvicorn --app-dir docs/examples fastapi_app:app

    curl -X POST 'http://127.0.0.1:8000/emails?to=a@b'

The producer is opened once per uvicorn worker process, in the app's
lifespan, and shared by every request that process serves.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from fastapi import FastAPI

import walq

QUEUE_DIR = os.environ.get("WALQ_DIR", "/tmp/app-queue")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with await walq.aconnect(QUEUE_DIR) as producer:
        app.state.producer = producer
        yield


app = FastAPI(lifespan=lifespan)


@app.post("/emails")
async def send_email(to: str) -> dict[str, object]:
    # Durable when it returns: the owner's job id, or None if it went to the spool.
    job_id = await app.state.producer.enqueue("send_email", {"to": to}, key=f"email:{to}")
    return {"job_id": job_id, "spooled": job_id is None}
