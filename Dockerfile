# One image for the worker, the beat and Flower; compose.yaml picks the command.
# The install is tests/install.py's recipe, which tests/e2e/test_install.py runs in a fresh
# virtual environment (tests/unit/test_deploy.py checks these lines follow it).

# Stage 1: the wheel, built from the sources alone.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ductape_jobs ./ductape_jobs
COPY workers ./workers
COPY beat ./beat
RUN pip wheel --no-deps --wheel-dir /wheels .

# Stage 2: that wheel and its runtime dependencies only; the app files beside it.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels && useradd --create-home app
WORKDIR /app
COPY examples ./examples
COPY flowerconfig.py ./
USER app
ENV PYTHONPATH=/app DUCTAPE_HANDLERS=examples.handlers
CMD ["celery", "-A", "workers", "worker", "--loglevel", "INFO"]
