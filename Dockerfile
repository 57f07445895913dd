FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY receiver ./receiver
COPY worker ./worker
COPY sandbox ./sandbox
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT ["bfus-lime"]
