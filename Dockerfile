FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY broker ./broker
COPY connectors ./connectors
COPY simulators ./simulators
COPY schemas ./schemas
RUN pip install --no-cache-dir '.[fast]'
ENV DEMAT_DATA_DIR=/var/lib/demat DEMAT_HOST=0.0.0.0
EXPOSE 8080
CMD ["demat", "serve"]
