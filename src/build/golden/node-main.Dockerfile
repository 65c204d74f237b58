FROM node:22-alpine
RUN apk add --no-cache dumb-init
RUN if command -v useradd >/dev/null; then groupadd -g 10001 app && useradd -u 10001 -g app -m -s /sbin/nologin app; \
    elif command -v adduser >/dev/null; then addgroup -S -g 10001 app && adduser -S -D -u 10001 -G app app; \
    else echo 'app:x:10001:10001::/tmp:/sbin/nologin' >> /etc/passwd && echo 'app:x:10001:' >> /etc/group; fi
WORKDIR /app
ENV NODE_ENV=production
COPY package.json ./
RUN npm install --omit=dev
COPY . .
USER 10001:10001
EXPOSE 3000
ENTRYPOINT ["dumb-init", "--"]
CMD ["node", "src/server.js"]
