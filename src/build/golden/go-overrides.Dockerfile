FROM registry.lan/golang:1.24-alpine AS build
WORKDIR /src
ENV CGO_ENABLED=0
COPY go.mod ./
RUN go mod download
COPY . .
RUN ["go", "build", "-trimpath", "-ldflags=-s -w", "-o", "/out/app", "."]

FROM registry.lan/alpine@sha256:0123abcd
RUN addgroup -S -g 10001 app && adduser -S -D -u 10001 -G app app
COPY --from=build /out/app /usr/local/bin/app
USER 10001:10001
EXPOSE 8080
CMD ["/usr/local/bin/app"]
