// The API's routes, one entry per client method. The client builds every request from this
// table, and scripts/check-openapi.mjs compares it (and the types in index.d.ts) with the
// service's OpenAPI document: every operation a vendor can call has an entry here, every entry
// is an operation of the document, and every field of its request and answer schemas is
// declared in the named TypeScript types.
//
// A new route is one entry here, one method in client.js and its types in index.d.ts.
//
// Entry: method, path (OpenAPI form, {param}), request (the TypeScript type of the body),
// form (the type of the multipart form a route takes besides JSON: a photo, or bulk photos, sent
// themselves),
// response (the TypeScript type of the 2xx JSON answer; omitted for non-JSON answers),
// responses (by status, where the route has more than one 2xx JSON answer: `wait` answers 200
// with the finished job or jobs, else 202), query (the TypeScript type of the query parameters),
// contentType of the body when it is only multipart.

/** @type {Readonly<Record<string, import('./routes.d.ts').Route>>} */
export const ROUTES = Object.freeze({
  // --- single and bulk jobs (/api/image-queue) ---
  cropFace: { method: 'POST', path: '/api/image-queue/crop-face-queue', request: 'CropFaceRequest', form: 'CropFaceUpload',
    response: 'JobQueued', responses: { 200: 'JobFinished', 202: 'JobQueued' } },
  bulkCropFace: { method: 'POST', path: '/api/image-queue/bulk-crop-face', request: 'BulkCropFaceRequest',
    form: 'BulkCropFaceUpload', response: 'BulkQueued', responses: { 200: 'BulkFinished', 202: 'BulkQueued' } },
  removeBackground: { method: 'POST', path: '/api/image-queue/remove-bg-queue', request: 'RemoveBgRequest', form: 'RemoveBgUpload',
    response: 'JobQueued', responses: { 200: 'JobFinished', 202: 'JobQueued' } },
  bulkRemoveBackground: { method: 'POST', path: '/api/image-queue/bulk-remove-bg', request: 'BulkRemoveBgRequest',
    form: 'BulkRemoveBgUpload', response: 'BulkQueued', responses: { 200: 'BulkFinished', 202: 'BulkQueued' } },
  idPhoto: { method: 'POST', path: '/api/image-queue/id-photo-queue', request: 'IdPhotoRequest', form: 'IdPhotoUpload',
    response: 'JobQueued', responses: { 200: 'JobFinished', 202: 'JobQueued' } },
  bulkIdPhoto: { method: 'POST', path: '/api/image-queue/bulk-id-photo', request: 'BulkIdPhotoRequest',
    form: 'BulkIdPhotoUpload', response: 'BulkQueued', responses: { 200: 'BulkFinished', 202: 'BulkQueued' } },
  job: { method: 'GET', path: '/api/image-queue/job/{jobId}', response: 'JobStatus' },
  cancelJob: { method: 'DELETE', path: '/api/image-queue/job/{jobId}', response: 'JobCanceled' },
  record: { method: 'GET', path: '/api/image-queue/record/{recordId}', response: 'RecordAnswer' },
  listRecords: { method: 'GET', path: '/api/image-queue/records', response: 'RecordsPage', query: 'RecordsQuery' },
  queueStats: { method: 'GET', path: '/api/image-queue/queue-stats', response: 'QueueStats' },
  // --- usage (/api/usage) ---
  usage: { method: 'GET', path: '/api/usage', response: 'Usage', query: 'UsageQuery' },
  // --- batches (/api/batch) ---
  uploadZip: { method: 'POST', path: '/api/batch/upload-zip', request: 'UploadZipRequest', response: 'BatchQueued', contentType: 'multipart/form-data' },
  addImages: { method: 'POST', path: '/api/batch/add-images', request: 'AddImagesRequest', response: 'BatchQueued' },
  batchStatus: { method: 'GET', path: '/api/batch/status/{batchId}', response: 'BatchStatusAnswer' },
  listBatches: { method: 'GET', path: '/api/batch', response: 'BatchesPage', query: 'BatchesQuery' },
  cancelBatch: { method: 'POST', path: '/api/batch/{batchId}/cancel', response: 'BatchCanceled' },
  batchResults: { method: 'GET', path: '/api/batch/{batchId}/results', query: 'BatchResultsQuery' },
  batchResultsZip: { method: 'GET', path: '/api/batch/{batchId}/results.zip' },
  batchQueueStats: { method: 'GET', path: '/api/batch/queue-stats', response: 'BatchQueueStats' },
  // --- health, files, the document ---
  health: { method: 'GET', path: '/api/worker/health', response: 'Health', public: true },
  livez: { method: 'GET', path: '/livez', response: 'Livez', public: true },
  downloadResult: { method: 'GET', path: '/files/{key}', public: true },
  openapi: { method: 'GET', path: '/api/openapi.json', response: 'OpenAPIDocument', public: true },
});

// Operations of the document this client leaves out on purpose, and why. Anything else the
// document lists must have a ROUTES entry (the check fails otherwise).
/** @type {Readonly<Record<string, string>>} */
export const NOT_IN_CLIENT = Object.freeze({
  'GET /': 'a pointer page for people',
  'GET /api/docs': 'Swagger UI (HTML)',
  'GET /api/docs/{asset}': "Swagger UI's files",
  'GET /console/': 'the web console (HTML, built on this client)',
  'GET /console/{filename}': "the console's files and this client's modules",
});

// Operations that need operators' credentials (HTTP Basic, the metrics token), not a vendor's
// API key, are not part of a vendor client either: the check skips any operation whose
// security schemes are all among these.
export const OPERATOR_SECURITY = Object.freeze(['AdminBasic', 'MetricsToken']);
