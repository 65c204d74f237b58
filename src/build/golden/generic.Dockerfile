FROM debian:bookworm-slim
WORKDIR /app
COPY . .
USER 10001:10001
EXPOSE 8080
CMD ["sh", "-c", "./run.sh --port 8080"]
