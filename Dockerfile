FROM python:3.11-slim
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir . && chmod +x docker-entrypoint.sh
ENV OPS_DATA_DIR=/app/var
ENTRYPOINT ["/app/docker-entrypoint.sh"]
