// queueAPI: the frontend module of the first design document, on top of ImageQueueClient.
//
//   const queueAPI = createQueueAPI({ baseUrl, apiKey });
//   const { jobId } = await queueAPI.queueBackgroundRemoval(recordId, projectId, photoUrl);
//   const job = await queueAPI.pollJobUntilComplete(jobId, 5 * 60 * 1000);
//
// pollJobUntilComplete resolves with the completed job and rejects when it failed
// (JobFailedError, code = the job's error code) or is still running at the timeout
// (WaitTimeoutError), so React Query's onError sees both.

import { ImageQueueClient } from './client.js';

const DEFAULT_POLL_TIMEOUT_MS = 5 * 60 * 1000;

function submit(call) {
  const { callbackUrl, vendorId, wait, ...options } = call ?? {};
  return { fields: { callbackUrl, vendorId, wait }, options };
}

/** A photo given as a URL goes as photoUrl; a File, Blob or bytes is sent itself (multipart). */
function photoField(photo) {
  return typeof photo === 'string' ? { photoUrl: photo } : { file: photo };
}

/** A bulk call's photos: URLs go as photoUrls; Files, Blobs or bytes are sent themselves (multipart files[]). */
function photosField(photos) {
  return photos.every((photo) => typeof photo === 'string') ? { photoUrls: photos } : { files: photos };
}

/** In a browser: hands a Blob to the user as a download named `filename`. */
function saveBlob(blob, filename) {
  const doc = /** @type {any} */ (globalThis).document;
  if (!doc || !filename || typeof URL.createObjectURL !== 'function') return;
  const url = URL.createObjectURL(blob);
  const link = doc.createElement('a');
  link.href = url;
  link.download = filename;
  link.style.display = 'none';
  doc.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/**
 * @param {import('./index.d.ts').ClientOptions | ImageQueueClient} [config]
 * @returns {import('./index.d.ts').QueueAPI}
 */
export function createQueueAPI(config = {}) {
  const client = config instanceof ImageQueueClient ? config : new ImageQueueClient(config);
  return {
    client,

    queueBackgroundRemoval(recordId, projectId, photo, options, call) {
      const { fields, options: callOptions } = submit(call);
      return client.removeBackground({ recordId, projectId, ...photoField(photo), options: options ?? undefined, ...fields },
        callOptions);
    },

    queueBulkBackgroundRemoval(recordIds, projectId, photos, options, call) {
      const { fields, options: callOptions } = submit(call);
      return client.bulkRemoveBackground({ recordIds, projectId, ...photosField(photos), options, ...fields }, callOptions);
    },

    queueFaceCrop(recordId, projectId, photo, mode = 'square', options, call) {
      const { fields, options: callOptions } = submit(call);
      return client.cropFace({ recordId, projectId, ...photoField(photo), mode, options: options ?? undefined, ...fields },
        callOptions);
    },

    queueBulkFaceCrop(recordIds, projectId, photos, mode = 'square', options, call) {
      const { fields, options: callOptions } = submit(call);
      return client.bulkCropFace({ recordIds, projectId, ...photosField(photos), mode, options, ...fields }, callOptions);
    },

    queueIdPhoto(recordId, projectId, photo, spec = 'icao', options, call) {
      const { fields, options: callOptions } = submit(call);
      return client.idPhoto({ recordId, projectId, ...photoField(photo), spec, options: options ?? undefined, ...fields },
        callOptions);
    },

    queueBulkIdPhoto(recordIds, projectId, photos, spec = 'icao', options, call) {
      const { fields, options: callOptions } = submit(call);
      return client.bulkIdPhoto({ recordIds, projectId, ...photosField(photos), spec, options: options ?? undefined, ...fields },
        callOptions);
    },

    pollJobUntilComplete(jobId, timeoutMs = DEFAULT_POLL_TIMEOUT_MS, options = {}) {
      return client.waitForCompletedJob(jobId, { ...options, timeoutMs });
    },

    cancelJob(jobId, options) {
      return client.cancelJob(jobId, options);
    },

    getJobStatus(jobId, options) {
      return client.job(jobId, options);
    },

    async getRecord(recordId, options) {
      return (await client.record(recordId, options)).record;
    },

    getQueueStats(options) {
      return client.queueStats(options);
    },

    getWorkerHealth(options) {
      return client.health(options);
    },

    async getBatchStatus(batchId, options) {
      return (await client.batchStatus(batchId, options)).batch;
    },

    listBatches(query, options) {
      return client.listBatches(query, options);
    },

    cancelBatch(batchId, options) {
      return client.cancelBatch(batchId, options);
    },

    async downloadResultsZip(batchId, options = {}) {
      const { filename, ...callOptions } = options;
      const blob = await client.batchResultsZip(batchId, callOptions);
      saveBlob(blob, filename);
      return blob;
    },
  };
}
