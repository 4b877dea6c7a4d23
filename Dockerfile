# lookalike: CLI, REST API and UI in one image. Used by docker-compose.yml.
#   docker build -t lookalike .
#   docker run --rm -p 8000:8000 lookalike serve --data-dir /data --host 0.0.0.0
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface \
    TORCH_HOME=/cache/torch \
    LOOKALIKE_DATA_DIR=/data

WORKDIR /app

# Only the package sources: the build context also holds .venv and data dirs that do not belong here.
COPY pyproject.toml README.md ./
COPY indexer ./indexer
COPY search ./search
COPY vlm ./vlm
COPY generation ./generation
COPY ui ./ui

# On linux/amd64 PyPI's torch wheel ships its own CUDA runtime, so the same image runs on CPU or GPU.
RUN pip install ".[all]"

VOLUME ["/data", "/cache"]
EXPOSE 8000 7860

ENTRYPOINT ["lookalike"]
CMD ["--help"]
