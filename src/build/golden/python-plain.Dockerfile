FROM python:3.13-alpine
RUN addgroup -S -g 10001 app && adduser -S -D -u 10001 -G app app
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY . .
USER 10001:10001
EXPOSE 8000
CMD ["python", "main.py"]
