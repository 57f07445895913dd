FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY cli ./cli
COPY shared ./shared
COPY migration ./migration
COPY deadletters ./deadletters
COPY receiver ./receiver
COPY worker ./worker
COPY sandbox ./sandbox
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT ["bfus-lime"]
