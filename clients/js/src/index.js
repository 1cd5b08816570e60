// @image-queue/client: the image-queue HTTP API from JavaScript and TypeScript (types: index.d.ts).
export {
  ImageQueueClient, VERSION, FINAL_JOB_STATES, FINAL_BATCH_STATUSES, newIdempotencyKey,
} from './client.js';
export { createQueueAPI } from './queue-api.js';
export {
  ImageQueueError, JobFailedError, WaitTimeoutError, errorFromResponse, parseRetryAfter,
} from './errors.js';
export { ROUTES } from './routes.js';
