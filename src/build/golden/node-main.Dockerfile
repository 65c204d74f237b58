FROM node:22-alpine
RUN apk add --no-cache dumb-init && addgroup -S -g 10001 app && adduser -S -D -u 10001 -G app app
WORKDIR /app
ENV NODE_ENV=production
COPY package.json ./
RUN npm install --omit=dev
COPY . .
USER 10001:10001
EXPOSE 3000
ENTRYPOINT ["dumb-init", "--"]
CMD ["node", "src/server.js"]
