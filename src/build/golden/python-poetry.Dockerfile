FROM python:3.13-alpine AS deps
WORKDIR /app
RUN python -m venv /venv && python -m venv /opt/poetry && /opt/poetry/bin/pip install --no-cache-dir poetry
ENV PATH="/venv/bin:$PATH"
COPY pyproject.toml poetry.lock ./
RUN VIRTUAL_ENV=/venv /opt/poetry/bin/poetry install --no-root --only main --no-interaction

FROM python:3.13-alpine
RUN addgroup -S -g 10001 app && adduser -S -D -u 10001 -G app app
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 FLASK_APP=app PATH="/venv/bin:$PATH"
COPY --from=deps /venv /venv
COPY . .
USER 10001:10001
EXPOSE 5000
CMD ["flask", "run", "--host", "0.0.0.0", "--port", "5000"]
