FROM busybox:stable AS site
COPY . /site
RUN rm -rf /site/.git

FROM busybox:stable
COPY --from=site /site /site
USER 10001:10001
EXPOSE 8080
CMD ["httpd", "-f", "-v", "-p", "8080", "-h", "/site"]
