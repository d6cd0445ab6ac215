# One image for every service: `abonent run <service>`, `abonent migrate` (see deploy/k8s).
# Not built in this repository's CI (no container engine there); the embedded servers are dev-only.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY services ./services
COPY widget ./widget
RUN pip install --no-cache-dir . && useradd --uid 10001 --no-create-home abonent
USER 10001
ENTRYPOINT ["abonent"]
