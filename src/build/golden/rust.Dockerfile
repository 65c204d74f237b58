FROM rust:1-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# Dependencies only: a placeholder crate (failures surface in the real build below).
RUN mkdir src && echo 'fn main() {}' > src/main.rs && (cargo build --release --locked || true) && rm -rf src
COPY . .
RUN find . -path ./target -prune -o -name '*.rs' -exec touch {} + && cargo build --release --locked && cp target/release/svc /app

FROM alpine:3.20
RUN if command -v useradd >/dev/null; then groupadd -g 10001 app && useradd -u 10001 -g app -m -s /sbin/nologin app; \
    elif command -v adduser >/dev/null; then addgroup -S -g 10001 app && adduser -S -D -u 10001 -G app app; \
    else echo 'app:x:10001:10001::/tmp:/sbin/nologin' >> /etc/passwd && echo 'app:x:10001:' >> /etc/group; fi
COPY --from=build /app /usr/local/bin/svc
USER 10001:10001
EXPOSE 8080
CMD ["/usr/local/bin/svc"]
