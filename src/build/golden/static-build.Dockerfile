FROM node:22-alpine AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci
COPY . .
RUN ["sh", "-c", "npm run build"]
RUN for dir in dist build out public; do if [ -f "$dir/index.html" ]; then cp -r "$dir" /site && exit 0; fi; done; echo 'no index.html in dist/, build/, out/ or public/ after the build: set the output directory' >&2; exit 1

FROM busybox:stable
COPY --from=build /site /site
USER 10001:10001
EXPOSE 8080
CMD ["httpd", "-f", "-v", "-p", "8080", "-h", "/site"]
