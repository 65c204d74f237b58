FROM python:3.13-alpine AS deps
WORKDIR /app
COPY requirements.txt ./
RUN pip install --no-cache-dir --target /deps -r requirements.txt

FROM python:3.13-alpine
RUN if command -v useradd >/dev/null; then groupadd -g 10001 app && useradd -u 10001 -g app -m -s /sbin/nologin app; \
    elif command -v adduser >/dev/null; then addgroup -S -g 10001 app && adduser -S -D -u 10001 -G app app; \
    else echo 'app:x:10001:10001::/tmp:/sbin/nologin' >> /etc/passwd && echo 'app:x:10001:' >> /etc/group; fi
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 FLASK_APP=app PYTHONPATH=/deps PATH="/deps/bin:$PATH"
COPY --from=deps /deps /deps
COPY . .
USER 10001:10001
EXPOSE 5000
CMD ["flask", "run", "--host", "0.0.0.0", "--port", "5000"]
