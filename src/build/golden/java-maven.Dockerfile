FROM maven:3.9-eclipse-temurin-21 AS build
WORKDIR /src
COPY pom.xml ./
# Dependencies only (failures surface in the real build below).
RUN mvn -B -q dependency:go-offline || true
COPY . .
RUN mvn -B package -DskipTests && jar="$(find target -maxdepth 1 -name '*.jar' ! -name '*-plain.jar' ! -name '*-sources.jar' ! -name '*-javadoc.jar' ! -name 'original-*' | head -n 1)" && if [ -z "$jar" ]; then echo 'no jar built in target/' >&2; exit 1; fi && cp "$jar" /app.jar

FROM eclipse-temurin:21-jre-alpine
RUN if command -v useradd >/dev/null; then groupadd -g 10001 app && useradd -u 10001 -g app -m -s /sbin/nologin app; \
    elif command -v adduser >/dev/null; then addgroup -S -g 10001 app && adduser -S -D -u 10001 -G app app; \
    else echo 'app:x:10001:10001::/tmp:/sbin/nologin' >> /etc/passwd && echo 'app:x:10001:' >> /etc/group; fi
WORKDIR /app
COPY --from=build /app.jar /app/app.jar
USER 10001:10001
EXPOSE 8080
CMD ["java", "-jar", "/app/app.jar"]
