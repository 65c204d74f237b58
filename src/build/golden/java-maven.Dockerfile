FROM maven:3.9-eclipse-temurin-21 AS build
WORKDIR /src
COPY pom.xml ./
# Dependencies only (failures surface in the real build below).
RUN mvn -B -q dependency:go-offline || true
COPY . .
RUN mvn -B package -DskipTests && jar="$(find target -maxdepth 1 -name '*.jar' ! -name '*-plain.jar' ! -name '*-sources.jar' ! -name '*-javadoc.jar' ! -name 'original-*' | head -n 1)" && if [ -z "$jar" ]; then echo 'no jar built in target/' >&2; exit 1; fi && cp "$jar" /app.jar

FROM eclipse-temurin:21-jre-alpine
RUN addgroup -S -g 10001 app && adduser -S -D -u 10001 -G app app
WORKDIR /app
COPY --from=build /app.jar /app/app.jar
USER 10001:10001
EXPOSE 8080
CMD ["java", "-jar", "/app/app.jar"]
