// Errors of the image-queue client. Every error the client throws (apart from an abort the
// caller asked for, which is rethrown as is) is an ImageQueueError.

export class ImageQueueError extends Error {
  // `message` is the API's own message (error.message), fit to show to a person; `status` and
  // `code` say what happened, `toString()` gives all three.
  /**
   * @param {string} message
   * @param {{status?: number|null, code?: string, details?: unknown, retryAfter?: number|null,
   *          body?: unknown, cause?: unknown}} [init]
   */
  constructor(message, init = {}) {
    super(message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = 'ImageQueueError';
    /** HTTP status; null when no answer came (network error, timeout, a failed job). */
    this.status = init.status ?? null;
    /** The API's error code (VALIDATION_ERROR, RATE_LIMITED, ...) or the client's own. */
    this.code = init.code ?? 'ERROR';
    /** The API's error.details (400: {field, reason}; 429: {limit, policy, per, retryAfter}). */
    this.details = init.details ?? null;
    /** Seconds, from the Retry-After header (429, 503, 409). */
    this.retryAfter = init.retryAfter ?? null;
    /** The parsed error body, when there was one. */
    this.body = init.body ?? null;
  }

  toString() {
    return `${this.name}: ${this.status == null ? '' : `HTTP ${this.status} `}${this.code}: ${this.message}`;
  }

  /** The request field a 400 names (details.field), if any. */
  get field() {
    const details = this.details;
    return details && typeof details === 'object' && 'field' in details ? /** @type {any} */ (details).field : null;
  }
}

/** A job ended `failed` or `canceled`; `job` is its last status, `code` its error code
 *  (JOB_CANCELED for a canceled job without one). */
export class JobFailedError extends ImageQueueError {
  constructor(job) {
    const error = job?.error ?? {};
    const canceled = job?.state === 'canceled';
    super(error.message ?? (canceled ? `job ${job?.id} was canceled` : `job ${job?.id} failed`),
      { code: error.code ?? (canceled ? 'JOB_CANCELED' : 'JOB_FAILED'), details: error, body: job });
    this.name = 'JobFailedError';
    this.job = job;
  }
}

/** A job or batch was not final within the wait; `last` is its last status (null if none was read). */
export class WaitTimeoutError extends ImageQueueError {
  constructor(message, last, cause) {
    super(message, { code: 'WAIT_TIMEOUT', body: last, cause });
    this.name = 'WaitTimeoutError';
    this.last = last ?? null;
  }
}

/** Parses a Retry-After header: seconds, or an HTTP date. */
export function parseRetryAfter(value) {
  if (value == null || String(value).trim() === '') return null;
  const text = String(value).trim();
  if (/^\d+(\.\d+)?$/.test(text)) return Number(text);
  const when = Date.parse(text);
  return Number.isNaN(when) ? null : Math.max(0, (when - Date.now()) / 1000);
}

/**
 * The ImageQueueError for an error answer (also a non-JSON one, e.g. from a proxy).
 * @param {Response} response
 */
export async function errorFromResponse(response) {
  const retryAfter = parseRetryAfter(response.headers.get('retry-after'));
  let body = null;
  try {
    const text = await response.text();
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  const error = body && typeof body === 'object' && body.error && typeof body.error === 'object' ? body.error : {};
  const code = String(error.code || `HTTP_${response.status}`);
  const message = String(error.message || response.statusText || 'error');
  return new ImageQueueError(message, {
    status: response.status, code, details: error.details ?? null, retryAfter, body,
  });
}
