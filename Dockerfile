# One image for the API and the workers (compose.yaml and the Procfile pick the command).
# `docker run -p 8000:8000 image-queue` serves the API: PORT (default 8000) binds 0.0.0.0.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8000
WORKDIR /app
# The whole dependency tree, pinned with hashes (docs/dependencies.md); nothing else is installed.
COPY requirements.lock .
RUN pip install --require-hashes --no-deps -r requirements.lock
COPY service service
COPY core core
COPY jobs jobs
COPY ops ops
# The web console serves the JavaScript client's own files (service/console.py).
COPY clients/js/src clients/js/src
COPY scripts scripts
COPY Procfile .
# Every path compose mounts a volume on (STORAGE_DIR and UPLOAD_DIR's defaults) exists and
# belongs to the app user, so a fresh named volume starts out writable by it (Docker copies
# the owner into an empty volume).
RUN useradd --system --uid 1000 app \
 && mkdir -p /app/var/storage /app/var/uploads \
 && chown -R app /app/var
USER app
EXPOSE 8000
# /livez: the process answers (no Redis, database or rembg call); /api/worker/health is the deep check.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('PORT', '8000'), timeout=4)"]
CMD ["gunicorn", "-c", "service/gunicorn.conf.py", "service.wsgi:app"]
