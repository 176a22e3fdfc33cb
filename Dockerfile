FROM python:3.11-slim
WORKDIR /app
# The locked versions first (a layer that changes only with the lockfile), then the project.
COPY requirements/base.txt requirements/base.txt
RUN pip install --no-cache-dir --require-hashes -r requirements/base.txt
COPY . .
RUN pip install --no-cache-dir --no-deps . && chmod +x docker-entrypoint.sh
ENV OPS_DATA_DIR=/app/var
ENTRYPOINT ["/app/docker-entrypoint.sh"]
