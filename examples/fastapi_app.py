"""FastAPI: an endpoint that schedules a job with AsyncDuctape (``uvicorn examples.fastapi_app:app``)."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel

from ductape_jobs import AsyncDuctape, JobValidationError


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # One client per process, made in the event loop that uses it, closed on shutdown.
    async with AsyncDuctape() as ductape:  # REDIS_URL, DUCTAPE_*
        app.state.ductape = ductape
        yield


app = FastAPI(lifespan=lifespan)


class Signup(BaseModel):
    userId: str
    email: str


@app.post("/signups", status_code=202)
async def signup(body: Signup, request: Request) -> dict[str, str]:
    ductape: AsyncDuctape = request.app.state.ductape
    try:
        handle = await ductape.job.schedule(
            env="prd",
            product_tag="my-app",
            event="send_welcome_email",
            retries=3,
            input=body.model_dump(),
        )
    except JobValidationError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
    return {"job_id": handle.job_id, "status": handle.status}
