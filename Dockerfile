# One image for the API and the workers (compose.yaml picks the command).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY service service
COPY core core
COPY jobs jobs
COPY ops ops
COPY scripts scripts
COPY Procfile .
RUN useradd --system --uid 1000 app && mkdir -p /app/var && chown app /app/var
USER app
EXPOSE 8000
CMD ["gunicorn", "-c", "service/gunicorn.conf.py", "service.wsgi:app"]
