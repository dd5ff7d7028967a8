# One image for the worker, the beat and Flower; compose.yaml picks the command.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md flowerconfig.py ./
COPY ductape_jobs ./ductape_jobs
COPY workers ./workers
COPY beat ./beat
COPY examples ./examples
RUN pip install --no-cache-dir . && useradd --create-home app
USER app
ENV DUCTAPE_HANDLERS=examples.handlers
CMD ["celery", "-A", "workers", "worker", "--loglevel", "INFO"]
