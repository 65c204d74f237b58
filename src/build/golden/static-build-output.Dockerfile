FROM node:22-alpine AS build
WORKDIR /src
COPY . .
RUN ["sh", "-c", "sh build.sh"]

FROM busybox:stable
COPY --from=build /src/out/site /site
USER 10001:10001
EXPOSE 8080
CMD ["httpd", "-f", "-v", "-p", "8080", "-h", "/site"]
