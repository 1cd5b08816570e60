// ImageQueueClient: one method per route of the image-queue API (src/routes.js), answers as the
// API sends them, with retries that are safe for submissions.
//
// Every POST carries an Idempotency-Key (a fresh UUID per call unless one is given) that stays
// the same on each retry of that call, so a submission retried after a lost answer returns the
// original job or batch instead of queueing twice. Retried (`retries` times, default 3):
// network errors and timeouts, 429 and 503 after their Retry-After (when it is at most
// `maxRetryWaitMs`), 502/504 from a proxy, and 409 IDEMPOTENCY_KEY_IN_USE. Without a
// Retry-After the wait backs off exponentially, with jitter, capped at `maxBackoffMs`.
// Anything else throws an ImageQueueError at once. No runtime dependencies: global fetch,
// FormData, Blob, AbortController and crypto (browsers, Node 18+, Deno, Bun).

import { ImageQueueError, JobFailedError, WaitTimeoutError, errorFromResponse } from './errors.js';
import { ROUTES } from './routes.js';

export const VERSION = '1.0.0';
export const FINAL_JOB_STATES = Object.freeze(['completed', 'failed', 'canceled']);
export const FINAL_BATCH_STATUSES = Object.freeze(['completed', 'completed_with_errors', 'failed', 'canceled']);
const RETRY_STATUSES = new Set([429, 502, 503, 504]);
const NODE_CRYPTO = 'node:crypto';
const RETRY_CODES = new Set(['IDEMPOTENCY_KEY_IN_USE', 'NETWORK_ERROR', 'REQUEST_TIMEOUT']);

function env(name) {
  // Node's environment, when there is one (never in a browser).
  const proc = /** @type {any} */ (globalThis).process;
  return proc && proc.env ? proc.env[name] : undefined;
}

/** A new Idempotency-Key: a random UUID. */
export async function newIdempotencyKey() {
  let webcrypto = /** @type {any} */ (globalThis).crypto;
  if (!webcrypto?.getRandomValues) {
    // Node 18 has no global crypto. A computed specifier, left alone by bundlers: browsers never get here.
    webcrypto = (await import(/* @vite-ignore */ /* webpackIgnore: true */ NODE_CRYPTO)).webcrypto;
  }
  if (typeof webcrypto.randomUUID === 'function') return webcrypto.randomUUID();
  // Browsers leave randomUUID out of insecure (plain http) pages; getRandomValues is there.
  const bytes = webcrypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function abortError(signal) {
  return signal.reason ?? new DOMException('This operation was aborted', 'AbortError');
}

/** Waits `ms`, or rejects with the signal's reason when it aborts first. */
export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError(signal));
    const timer = setTimeout(done, Math.max(0, ms));
    function onAbort() {
      clearTimeout(timer);
      reject(abortError(signal));
    }
    function done() {
      signal?.removeEventListener('abort', onAbort);
      resolve(undefined);
    }
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function withoutUndefined(fields) {
  return Object.fromEntries(Object.entries(fields).filter(([, value]) => value !== undefined));
}

function pageQuery(query) {
  if (!query) return undefined;
  const { limit, ...rest } = query;
  return withoutUndefined({ ...rest, limit: limit === undefined ? undefined : String(limit) });
}

function toBlob(file, what = 'uploadZip', type = 'application/zip') {
  if (typeof Blob !== 'undefined' && file instanceof Blob) return file;
  if (file instanceof ArrayBuffer || ArrayBuffer.isView(file)) return new Blob([file], { type });
  throw new TypeError(`${what}: \`file\` must be a Blob, File, ArrayBuffer or typed array`);
}

/**
 * A multipart body maker (a fresh FormData per try): the fields (objects such as options, a
 * custom spec or a bulk call's recordIds as JSON text, numbers as text), then the photo last as
 * `file`, or a bulk call's photos as `files[]` parts in the order of recordIds (the API reads
 * the fields before the files).
 */
function formOf(request, what, defaultName, type) {
  const { file, filename, files, filenames, options, ...fields } = request;
  let parts;
  if (files !== undefined) {
    if (!Array.isArray(files)) throw new TypeError(`${what}: \`files\` must be an array of Blobs, Files or bytes`);
    parts = files.map((one, i) => ['files[]', toBlob(one, what, type),
      filenames?.[i] ?? /** @type {any} */ (one).name ?? `${defaultName}-${i + 1}`]);
  } else {
    parts = [['file', toBlob(file, what, type), filename ?? /** @type {any} */ (file).name ?? defaultName]];
  }
  return () => {
    const data = new FormData();
    const values = withoutUndefined({ ...fields, options: options ?? undefined });
    for (const [key, value] of Object.entries(values)) {
      // Objects (options, a custom ID-photo spec, recordIds) go as JSON text; numbers and strings as text.
      if (value !== null) data.append(key, typeof value === 'object' ? JSON.stringify(value) : String(value));
    }
    for (const [key, blob, name] of parts) data.append(key, blob, name);
    return data;
  };
}

/**
 * A JSON body, or a multipart form when the request carries the photo itself (`file`) or, for a
 * bulk call, the photos themselves (`files`).
 */
function photoBody(name, body) {
  if (body && (body.file ?? body.files) != null) {
    return { form: formOf(body, name, 'photo', 'application/octet-stream'), timeoutMs: 0 };
  }
  return { json: withoutUndefined(body) };
}

export class ImageQueueClient {
  /**
   * @param {import('./index.d.ts').ClientOptions} [options]
   */
  constructor(options = {}) {
    const baseUrl = options.baseUrl ?? env('IMAGEQUEUE_URL') ?? '';
    this.baseUrl = String(baseUrl).replace(/\/+$/, '');
    this.apiKey = options.apiKey ?? env('IMAGEQUEUE_API_KEY') ?? null;
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.retries = Math.max(0, options.retries ?? 3);
    this.backoffMs = options.backoffMs ?? 500;
    this.maxBackoffMs = options.maxBackoffMs ?? 10_000;
    this.maxRetryWaitMs = options.maxRetryWaitMs ?? 60_000;
    this.headers = { ...(options.headers ?? {}) };
    this.random = options.random ?? Math.random;
    this._fetch = options.fetch ?? ((...args) => globalThis.fetch(...args));
  }

  // --- plumbing ---------------------------------------------------------------------------

  /** The wait before retry number `attempt` (0-based): exponential, capped, with jitter (50-100 %). */
  backoff(attempt) {
    const ceiling = Math.min(this.maxBackoffMs, this.backoffMs * 2 ** attempt);
    return ceiling * (0.5 + 0.5 * this.random());
  }

  /** Whether an error is worth retrying (the same rules for submissions and polls). */
  retryable(error) {
    return error instanceof ImageQueueError
      && (RETRY_STATUSES.has(/** @type {number} */ (error.status)) || RETRY_CODES.has(error.code));
  }

  /** The URL of a route, its {params} filled in (a storage key keeps its slashes). */
  url(name, params = {}, query = undefined) {
    const route = ROUTES[name];
    if (!route) throw new TypeError(`unknown route ${name}`);
    const path = route.path.replace(/\{(\w+)\}/g, (_, param) => {
      const value = params[param];
      if (value === undefined || value === null || value === '') throw new TypeError(`${name}: ${param} is required`);
      // A storage key (/files/{key}) keeps its slashes; any other id is one path segment.
      return param === 'key' ? String(value).split('/').map(encodeURIComponent).join('/') : encodeURIComponent(value);
    });
    const search = query ? new URLSearchParams(withoutUndefined(query)).toString() : '';
    return `${this.baseUrl}${path}${search ? `?${search}` : ''}`;
  }

  /**
   * One API call with retries; resolves with the 2xx Response, or throws ImageQueueError.
   * `timeoutMs` bounds each try until the answer's headers arrive (reading a streamed body is not bounded).
   * @param {string} name  a key of ROUTES
   * @param {object} [init]
   */
  async send(name, init = {}) {
    const route = ROUTES[name];
    const url = init.url ?? this.url(name, init.params, init.query);
    const headers = { Accept: route.response ? 'application/json' : '*/*', ...this.headers };
    if (!route.public) {
      if (!this.apiKey) {
        throw new ImageQueueError('An API key is needed: createQueueAPI({apiKey}) or new ImageQueueClient({apiKey}).',
          { code: 'NO_API_KEY' });
      }
      headers['X-API-Key'] = this.apiKey;
    }
    if (route.method === 'POST') headers['Idempotency-Key'] = init.idempotencyKey ?? await newIdempotencyKey();
    if (init.json !== undefined) headers['Content-Type'] = 'application/json';
    const retries = Math.max(0, init.retries ?? this.retries);
    const timeoutMs = init.timeoutMs ?? (route.contentType === 'multipart/form-data' ? 0 : this.timeoutMs);
    const okStatuses = init.okStatuses ?? [];
    const signal = init.signal;
    for (let attempt = 0; ; attempt += 1) {
      if (signal?.aborted) throw abortError(signal);
      let body;
      if (init.json !== undefined) body = JSON.stringify(init.json);
      else if (init.form) body = init.form(); // a fresh FormData for every try
      const controller = new AbortController();
      const onAbort = () => controller.abort(abortError(signal));
      signal?.addEventListener('abort', onAbort, { once: true });
      let timedOut = false;
      const timer = timeoutMs > 0 ? setTimeout(() => { timedOut = true; controller.abort(); }, timeoutMs) : null;
      let error;
      try {
        const response = await this._fetch(url, { method: route.method, headers, body, signal: controller.signal });
        if (response.ok || okStatuses.includes(response.status)) return response;
        error = await errorFromResponse(response);
      } catch (caught) {
        if (signal?.aborted) throw abortError(signal);
        error = timedOut
          ? new ImageQueueError(`${route.method} ${url}: no answer within ${timeoutMs} ms`, { code: 'REQUEST_TIMEOUT', cause: caught })
          : new ImageQueueError(`${route.method} ${url} failed: ${caught?.cause?.code ?? caught?.message ?? caught}`,
            { code: 'NETWORK_ERROR', cause: caught });
      } finally {
        if (timer) clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      }
      if (!this.retryable(error) || attempt >= retries) throw error;
      const wait = error.retryAfter != null ? error.retryAfter * 1000 : this.backoff(attempt);
      if (wait > this.maxRetryWaitMs) throw error;
      await sleep(wait, signal);
    }
  }

  /** One API call answering JSON. */
  async call(name, init = {}) {
    const response = await this.send(name, init);
    const text = await response.text();
    try {
      return text ? JSON.parse(text) : null;
    } catch (cause) {
      throw new ImageQueueError(`${name}: the answer is not JSON`, { status: response.status, code: 'NOT_JSON', cause });
    }
  }

  static _call(options) {
    const { idempotencyKey, signal, timeoutMs, retries } = options ?? {};
    return { idempotencyKey, signal, timeoutMs, retries };
  }

  // --- single and bulk jobs (/api/image-queue) ---------------------------------------------

  /**
   * POST /api/image-queue/crop-face-queue: queue one face crop of `photoUrl`, or of `file` (the
   * photo itself, sent as a multipart form). With `wait` (0-30 s) the answer is the finished job
   * (200, `state` set) when it ends in time, else the usual JobQueued (202).
   */
  cropFace(body, options) {
    return this._submit('cropFace', body, options);
  }

  /** A request that waits (`wait` s) or uploads gets no shorter timeout than that wait and more. */
  _waitTimeout(body, sent) {
    if (sent.form) return 0;
    const wait = Number(body?.wait ?? 0);
    return wait > 0 ? Math.max(this.timeoutMs, wait * 1000 + 15_000) : undefined;
  }

  /** A submission of JSON, or of a multipart form carrying the photo(s), with the wait's timeout. */
  _submit(name, body, options) {
    const call = ImageQueueClient._call(options);
    const sent = photoBody(name, body);
    return this.call(name, { ...sent, ...call, timeoutMs: call.timeoutMs ?? this._waitTimeout(body, sent) });
  }

  /**
   * POST /api/image-queue/bulk-crop-face: queue face crops for parallel lists of records and
   * photoUrls, or of records and `files` (the photos themselves, multipart, in the same order).
   * With `wait` (0-30 s) the answer is every finished job (200, BulkFinished) when all end in
   * time, else the usual BulkQueued (202).
   */
  bulkCropFace(body, options) {
    return this._submit('bulkCropFace', body, options);
  }

  /** POST /api/image-queue/remove-bg-queue: one background removal, of `photoUrl` or `file`; `wait` as cropFace. */
  removeBackground(body, options) {
    return this._submit('removeBackground', body, options);
  }

  /** POST /api/image-queue/bulk-remove-bg: background removals for parallel lists; `files` and `wait` as bulkCropFace. */
  bulkRemoveBackground(body, options) {
    return this._submit('bulkRemoveBackground', body, options);
  }

  /**
   * POST /api/image-queue/id-photo-queue: one ID photo (a spec's size, head and eye line, a plain
   * background, a compliance report) of `photoUrl` or `file`; `wait` as cropFace.
   */
  idPhoto(body, options) {
    return this._submit('idPhoto', body, options);
  }

  /** POST /api/image-queue/bulk-id-photo: ID photos for parallel lists; `files` and `wait` as bulkCropFace. */
  bulkIdPhoto(body, options) {
    return this._submit('bulkIdPhoto', body, options);
  }

  /** GET /api/image-queue/job/{jobId}: state, progress, result or error of a job. */
  job(jobId, options) {
    return this.call('job', { params: { jobId }, ...ImageQueueClient._call(options) });
  }

  /** DELETE /api/image-queue/job/{jobId}: cancel a job (409 JOB_NOT_CANCELABLE once it finished). */
  cancelJob(jobId, options) {
    return this.call('cancelJob', { params: { jobId }, ...ImageQueueClient._call(options) });
  }

  /** GET /api/image-queue/records: the vendor's records, newest first, a page at a time (nextCursor). */
  listRecords(query, options) {
    return this.call('listRecords', { query: pageQuery(query), ...ImageQueueClient._call(options) });
  }

  /** GET /api/image-queue/record/{recordId}: the vendor's record row. */
  record(recordId, options) {
    return this.call('record', { params: { recordId }, ...ImageQueueClient._call(options) });
  }

  /** GET /api/image-queue/queue-stats: job counts of the single-job queues. */
  queueStats(options) {
    return this.call('queueStats', ImageQueueClient._call(options));
  }

  // --- usage (/api/usage) ------------------------------------------------------------------

  /**
   * GET /api/usage: the vendor's single jobs and batches per operation (of one project with
   * `projectId`), and each rate-limit category's limit and what is left of it now.
   */
  usage(query, options) {
    return this.call('usage', { query, ...ImageQueueClient._call(options) });
  }

  // --- batches (/api/batch) ------------------------------------------------------------------

  /** POST /api/batch/upload-zip: upload a ZIP (Blob, File, ArrayBuffer or bytes) as one batch. */
  uploadZip(request, options) {
    const form = formOf(request, 'uploadZip', 'upload.zip', 'application/zip');
    return this.call('uploadZip', { form, ...ImageQueueClient._call(options) });
  }

  /** POST /api/batch/add-images: queue a list of {recordId, imageUrl} as one batch. */
  addImages(body, options) {
    return this.call('addImages', { json: withoutUndefined(body), ...ImageQueueClient._call(options) });
  }

  /** GET /api/batch/status/{batchId}: a batch's progress. */
  batchStatus(batchId, options) {
    return this.call('batchStatus', { params: { batchId }, ...ImageQueueClient._call(options) });
  }

  /** GET /api/batch: the vendor's batches, newest first, a page at a time (nextCursor). */
  listBatches(query, options) {
    return this.call('listBatches', { query: pageQuery(query), ...ImageQueueClient._call(options) });
  }

  /** POST /api/batch/{batchId}/cancel: its pending images will not run (409 BATCH_NOT_CANCELABLE once final). */
  cancelBatch(batchId, options) {
    return this.call('cancelBatch', { params: { batchId }, ...ImageQueueClient._call(options) });
  }

  /** GET /api/batch/{batchId}/results.zip: every finished output and the listing, as one ZIP (a Blob). */
  async batchResultsZip(batchId, options) {
    const response = await this.send('batchResultsZip', { params: { batchId }, ...ImageQueueClient._call(options) });
    return response.blob();
  }

  /** The same ZIP as a stream, for big batches (write it out as it comes). */
  async batchResultsZipStream(batchId, options) {
    const response = await this.send('batchResultsZip', { params: { batchId }, ...ImageQueueClient._call(options) });
    return /** @type {ReadableStream<Uint8Array>} */ (response.body);
  }

  /** GET /api/batch/{batchId}/results (JSON lines): every image's outcome, read as it streams. */
  async *batchResults(batchId, options) {
    const response = await this.send('batchResults',
      { params: { batchId }, query: { format: 'jsonl' }, ...ImageQueueClient._call(options) });
    const decoder = new TextDecoder();
    let pending = '';
    const parse = (line) => (line.trim() ? JSON.parse(line) : undefined);
    if (!response.body) {
      for (const line of (await response.text()).split('\n')) if (line.trim()) yield parse(line);
      return;
    }
    const reader = response.body.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        pending += decoder.decode(value, { stream: true });
        let newline;
        while ((newline = pending.indexOf('\n')) >= 0) {
          const line = pending.slice(0, newline);
          pending = pending.slice(newline + 1);
          if (line.trim()) yield parse(line);
        }
      }
      pending += decoder.decode();
      if (pending.trim()) yield parse(pending);
    } finally {
      reader.releaseLock();
    }
  }

  /** GET /api/batch/{batchId}/results?format=csv: the same rows as CSV text. */
  async batchResultsCsv(batchId, options) {
    const response = await this.send('batchResults',
      { params: { batchId }, query: { format: 'csv' }, ...ImageQueueClient._call(options) });
    return response.text();
  }

  /** GET /api/batch/queue-stats: job counts of the batch queues. */
  batchQueueStats(options) {
    return this.call('batchQueueStats', ImageQueueClient._call(options));
  }

  // --- health, files, the document -----------------------------------------------------------

  /** GET /api/worker/health: answers the body for 503 (unhealthy) too. No key needed. */
  health(options) {
    return this.call('health', { okStatuses: [503], ...ImageQueueClient._call(options) });
  }

  /** GET /livez: the process answers. */
  livez(options) {
    return this.call('livez', ImageQueueClient._call(options));
  }

  /** GET /api/openapi.json: the API's OpenAPI 3 document. */
  openapi(options) {
    return this.call('openapi', ImageQueueClient._call(options));
  }

  /**
   * A result (a job's photoUrl, a record's outputUrl, a storage key of /files/) as a Blob.
   * The API key is never sent: results are served by the storage (the app's /files/ or a CDN).
   */
  async downloadResult(urlOrKey, options) {
    const isUrl = /^https?:\/\//i.test(urlOrKey) || String(urlOrKey).startsWith('/');
    const url = isUrl ? (String(urlOrKey).startsWith('/') ? `${this.baseUrl}${urlOrKey}` : urlOrKey)
      : this.url('downloadResult', { key: urlOrKey });
    const response = await this.send('downloadResult', { url, ...ImageQueueClient._call(options) });
    return response.blob();
  }

  // --- waiting -------------------------------------------------------------------------------

  async _poll(what, read, isFinal, options = {}) {
    const timeoutMs = options.timeoutMs ?? 600_000;
    const maxIntervalMs = options.maxIntervalMs ?? 5_000;
    let interval = options.intervalMs ?? 500;
    const deadline = Date.now() + timeoutMs;
    let last = null;
    let failures = 0;
    for (;;) {
      let wait;
      let lastError = null;
      try {
        last = await read({ signal: options.signal, retries: 0 });
        failures = 0;
        options.onUpdate?.(last);
        if (isFinal(last)) return last;
        wait = interval * (0.8 + 0.4 * this.random());
        interval = Math.min(interval * 1.5, maxIntervalMs);
      } catch (error) {
        // Rate limited (429), unavailable (503), a proxy's 502/504, the network: wait as told
        // (Retry-After) or back off, and poll again. Anything else (404, 401, abort) ends it.
        if (!this.retryable(error)) throw error;
        lastError = error;
        wait = error.retryAfter != null ? error.retryAfter * 1000 : this.backoff(failures);
        failures += 1;
      }
      const left = deadline - Date.now();
      if (left <= 0 || (lastError && wait > left)) {
        throw new WaitTimeoutError(`${what} is not finished after ${timeoutMs} ms`
          + (lastError ? ` (last poll: ${lastError.code})` : ''), last, lastError ?? undefined);
      }
      await sleep(Math.min(wait, left), options.signal);
    }
  }

  /**
   * Polls a job until completed, failed or canceled and answers its last status (whatever it is).
   * Between polls the interval grows (x1.5, jittered) to maxIntervalMs; 429/503 answers wait
   * their Retry-After. WaitTimeoutError after timeoutMs.
   */
  waitForJob(jobId, options = {}) {
    return this._poll(`job ${jobId}`, (init) => this.job(jobId, init),
      (job) => FINAL_JOB_STATES.includes(job?.state), options);
  }

  /** Polls a batch until completed, completed_with_errors, failed or canceled; answers its last status answer. */
  waitForBatch(batchId, options = {}) {
    return this._poll(`batch ${batchId}`, (init) => this.batchStatus(batchId, init),
      (answer) => FINAL_BATCH_STATUSES.includes(answer?.batch?.status),
      { intervalMs: 1_000, maxIntervalMs: 10_000, timeoutMs: 3_600_000, ...options });
  }

  /** Like waitForJob, but a failed or canceled job throws JobFailedError: the answer is always a completed job. */
  async waitForCompletedJob(jobId, options = {}) {
    const job = await this.waitForJob(jobId, options);
    if (job.state !== 'completed') throw new JobFailedError(job);
    return job;
  }
}
