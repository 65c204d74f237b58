FROM python:3.13-alpine AS deps
WORKDIR /app
RUN python -m venv /venv && python -m venv /opt/pipenv && /opt/pipenv/bin/pip install --no-cache-dir pipenv
ENV PATH="/venv/bin:$PATH"
COPY Pipfile Pipfile.lock ./
RUN /opt/pipenv/bin/pipenv requirements > /tmp/requirements.txt && pip install --no-cache-dir -r /tmp/requirements.txt

FROM python:3.13-alpine
RUN addgroup -S -g 10001 app && adduser -S -D -u 10001 -G app app
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH="/venv/bin:$PATH"
COPY --from=deps /venv /venv
COPY . .
USER 10001:10001
EXPOSE 8000
CMD ["python", "main.py"]
