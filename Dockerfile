# mlip on CPU: `docker build -t mlip .` then `docker run --rm -v "$PWD/runs:/app/runs" mlip train`
# (the bundled default run; the model file lands in ./runs/default/model.pt on the host).
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    WANDB_MODE=offline

WORKDIR /app

# torch's CPU build first: an unpinned torch from PyPI pulls a multi-GB CUDA build
RUN python -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

# the project (mlip/conf is a link to conf/; the bundled data sets are used from /app/data)
COPY pyproject.toml README.md ./
COPY conf ./conf
COPY mlip ./mlip
COPY data ./data
COPY scripts ./scripts
RUN python -m pip install . && mlip --version

ENTRYPOINT ["mlip"]
CMD ["--help"]
