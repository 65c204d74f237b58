FROM busybox:stable
COPY public /site
USER 10001:10001
EXPOSE 8080
CMD ["httpd", "-f", "-v", "-p", "8080", "-h", "/site"]
