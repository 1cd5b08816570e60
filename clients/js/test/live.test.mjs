// The client against a running image-queue stack (API, workers, Redis, rembg). Skipped unless
// IMAGEQUEUE_URL is set; tests/integration/test_js_client.py starts the stack and runs it with:
//   IMAGEQUEUE_URL        the API's base URL
//   IMAGEQUEUE_API_KEY    a vendor's key
//   IMAGEQUEUE_PHOTO_URL  a photo with a face the workers can fetch
//   IMAGEQUEUE_MISSING_URL  (optional) a URL that answers 404
//   IMAGEQUEUE_ZIP_PATH   (optional) a ZIP of photos for uploadZip
//   IMAGEQUEUE_SLOW_PHOTO_URL  (optional) a photo that takes seconds to answer (a job to cancel)
//   IMAGEQUEUE_PROJECT    (optional) the projectId to use (default js-live)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';

import { DEFAULT_DTS, checkPackage, parseDts } from '../scripts/check-openapi.mjs';
import { ImageQueueClient, ImageQueueError, createQueueAPI } from '../src/index.js';

const env = process.env;
const LIVE = Boolean(env.IMAGEQUEUE_URL);
const skip = LIVE ? false : 'set IMAGEQUEUE_URL, IMAGEQUEUE_API_KEY and IMAGEQUEUE_PHOTO_URL to run against a stack';
const PROJECT = env.IMAGEQUEUE_PROJECT ?? 'js-live';
const RUN = Date.now().toString(36);
const WAIT_MS = 180_000;

const queueAPI = LIVE ? createQueueAPI({ baseUrl: env.IMAGEQUEUE_URL, apiKey: env.IMAGEQUEUE_API_KEY }) : null;
const client = queueAPI?.client;
const { types } = parseDts(await readFile(DEFAULT_DTS, 'utf8'));

/** The fields of an interface, its inherited ones (extends) included. */
function declaredFields(typeName) {
  const type = types.get(typeName);
  const fields = new Set(type.fields.keys());
  for (const parent of type.extends) for (const name of declaredFields(parent)) fields.add(name);
  return fields;
}

/** Every key of a live answer is declared in the named TypeScript type. */
function assertDeclared(value, typeName) {
  const declared = declaredFields(typeName);
  const undeclared = Object.keys(value).filter((key) => !declared.has(key));
  assert.deepEqual(undeclared, [], `${typeName} lacks field(s) the API answers: ${undeclared.join(', ')}`);
}

test('the client matches the stack\'s own OpenAPI document', { skip }, async () => {
  const result = await checkPackage(await client.openapi());
  assert.deepEqual(result.problems, []);
  assert.ok(result.operations >= 16 && result.fields > 100);
});

test('queueAPI: a face crop, queued and polled to completion', { skip, timeout: WAIT_MS + 30_000 }, async () => {
  const recordId = `js-crop-${RUN}`;
  const queued = await queueAPI.queueFaceCrop(recordId, PROJECT, env.IMAGEQUEUE_PHOTO_URL, 'passport');
  assertDeclared(queued, 'JobQueued');
  assert.equal(queued.recordId, recordId);
  const job = await queueAPI.pollJobUntilComplete(queued.jobId, WAIT_MS);
  assertDeclared(job, 'JobStatus');
  assert.equal(job.state, 'completed');
  assert.equal(job.result.faceDetected, true);
  assert.deepEqual([job.result.width, job.result.height], [413, 531]);
  const image = await client.downloadResult(job.result.photoUrl);
  assert.equal(image.type, 'image/jpeg');
  assert.ok(image.size > 1000);
  const record = await queueAPI.getRecord(recordId);
  assertDeclared(record, 'RecordRow');
  assert.equal(record.status, 'completed');
  assert.equal(record.outputUrl, job.result.photoUrl);
});

test('a photo sent itself with wait: the finished job comes back in the answer', { skip, timeout: 120_000 }, async () => {
  const photo = new Blob([await (await fetch(env.IMAGEQUEUE_PHOTO_URL)).arrayBuffer()], { type: 'image/jpeg' });
  const crop = await queueAPI.queueFaceCrop(`js-upload-crop-${RUN}`, PROJECT, photo, 'square', null, { wait: 25 });
  assert.equal(crop.state, 'completed', JSON.stringify(crop));
  assertDeclared(crop, 'JobFinished');
  assert.equal(crop.recordId, `js-upload-crop-${RUN}`);
  assert.equal(crop.result.faceDetected, true);
  assert.ok(crop.result.faces[0].box.width > 0);
  const cut = await queueAPI.queueBackgroundRemoval(`js-upload-bg-${RUN}`, PROJECT, photo, { maxSide: 256 }, { wait: 25 });
  assert.equal(cut.state, 'completed', JSON.stringify(cut));
  const image = await client.downloadResult(cut.result.photoUrl);
  assert.equal(image.type, 'image/png');
});

test('queueAPI: a background removal, queued and polled to completion', { skip, timeout: WAIT_MS + 30_000 }, async () => {
  const queued = await queueAPI.queueBackgroundRemoval(`js-bg-${RUN}`, PROJECT, env.IMAGEQUEUE_PHOTO_URL);
  const job = await queueAPI.pollJobUntilComplete(queued.jobId, WAIT_MS);
  assert.equal(job.result.format, 'png');
  const cutout = await client.downloadResult(job.result.photoUrl);
  assert.equal(cutout.type, 'image/png');
  assert.ok(cutout.size > 1000);
});

test('queueAPI: bulk face crops and background removals', { skip, timeout: 2 * WAIT_MS }, async () => {
  const photo = env.IMAGEQUEUE_PHOTO_URL;
  const crops = await queueAPI.queueBulkFaceCrop([`js-bc1-${RUN}`, `js-bc2-${RUN}`], PROJECT, [photo, photo], 'square',
    { outputWidth: 200 });
  assertDeclared(crops, 'BulkQueued');
  assert.equal(crops.count, 2);
  const cuts = await queueAPI.queueBulkBackgroundRemoval([`js-bb1-${RUN}`], PROJECT, [photo], { bgColor: '#ffffff' });
  const jobs = await Promise.all([...crops.jobIds, ...cuts.jobIds].map((id) => queueAPI.pollJobUntilComplete(id, WAIT_MS)));
  assert.deepEqual(jobs.map((job) => job.result.width).slice(0, 2), [200, 200]);
  assert.equal(jobs[2].result.format, 'jpeg');
});

test('a bad request throws ImageQueueError naming the field; unknown ids and keys too', { skip }, async () => {
  const photo = env.IMAGEQUEUE_PHOTO_URL;
  const badMode = await queueAPI.queueFaceCrop(`js-bad-${RUN}`, PROJECT, photo, /** @type {any} */ ('selfie')).catch((e) => e);
  assert.ok(badMode instanceof ImageQueueError, String(badMode));
  assert.equal(badMode.status, 400);
  assert.equal(badMode.code, 'VALIDATION_ERROR');
  assert.equal(badMode.field, 'mode');
  const badUrl = await queueAPI.queueBackgroundRemoval(`js-bad-${RUN}`, PROJECT, 'ftp://example.com/a.jpg').catch((e) => e);
  assert.equal(badUrl.field, 'photoUrl');
  const badOption = await queueAPI.queueBackgroundRemoval(`js-bad-${RUN}`, PROJECT, photo,
    /** @type {any} */ ({ sharpen: true })).catch((e) => e);
  assert.equal(badOption.status, 400);
  assert.match(String(badOption.field), /^options/);
  const missing = await queueAPI.getJobStatus('0'.repeat(32)).catch((e) => e);
  assert.equal(missing.status, 404);
  assert.equal(missing.code, 'JOB_NOT_FOUND');
  const stranger = await new ImageQueueClient({ baseUrl: env.IMAGEQUEUE_URL, apiKey: 'iq_not-a-key', retries: 0 })
    .queueStats().catch((e) => e);
  assert.equal(stranger.status, 401);
  assert.equal(stranger.code, 'INVALID_API_KEY');
});

test('a submission sent again with its Idempotency-Key answers the same job', { skip }, async () => {
  const body = { recordId: `js-idem-${RUN}`, projectId: PROJECT, photoUrl: env.IMAGEQUEUE_PHOTO_URL, mode: 'square' };
  const key = `js-live-${RUN}`;
  const first = await client.cropFace(body, { idempotencyKey: key });
  const again = await client.cropFace(body, { idempotencyKey: key });
  assert.equal(again.jobId, first.jobId);
  const reused = await client.cropFace({ ...body, mode: 'passport' }, { idempotencyKey: key }).catch((e) => e);
  assert.equal(reused.status, 422);
  assert.equal(reused.code, 'IDEMPOTENCY_KEY_REUSED');
  assert.equal((await client.waitForJob(first.jobId, { timeoutMs: WAIT_MS })).state, 'completed');
});

test('batches: a URL list and a ZIP upload, waited for, with their results', { skip, timeout: 2 * WAIT_MS }, async () => {
  const images = [{ recordId: `js-u1-${RUN}`, imageUrl: env.IMAGEQUEUE_PHOTO_URL }];
  if (env.IMAGEQUEUE_MISSING_URL) images.push({ recordId: `js-u2-${RUN}`, imageUrl: env.IMAGEQUEUE_MISSING_URL });
  const batch = await client.addImages({ projectId: PROJECT, priority: 7, mode: 'square', images });
  assertDeclared(batch, 'BatchQueued');
  const seen = [];
  const final = await client.waitForBatch(batch.batchId, { timeoutMs: WAIT_MS, intervalMs: 300,
    onUpdate: (answer) => seen.push(answer.batch.status) });
  assertDeclared(final.batch, 'Batch');
  assert.equal(final.batch.status, images.length > 1 ? 'completed_with_errors' : 'completed');
  assert.equal(seen.at(-1), final.batch.status);
  const rows = [];
  for await (const row of client.batchResults(batch.batchId)) {
    assertDeclared(row, 'BatchResultRow');
    rows.push(row);
  }
  assert.deepEqual(rows.map((row) => row.recordId), images.map((image) => image.recordId));
  assert.equal(rows[0].status, 'completed');
  if (images.length > 1) assert.equal(rows[1].errorCode, 'IMAGE_NOT_FOUND');
  assert.match(await client.batchResultsCsv(batch.batchId), /^seq,recordId,entry,status/);
  const zipped = new Uint8Array(await (await client.batchResultsZip(batch.batchId)).arrayBuffer());
  assert.deepEqual([...zipped.slice(0, 2)], [0x50, 0x4b]); // PK
  const listed = await client.listBatches({ projectId: PROJECT, limit: 50 });
  assert.ok(listed.batches.some((item) => item.batchId === batch.batchId));
  listed.batches.forEach((item) => assertDeclared(item, 'Batch'));
  const finished = await client.cancelBatch(batch.batchId).catch((e) => e);
  assert.equal(finished.status, 409);
  assert.equal(finished.code, 'BATCH_NOT_CANCELABLE');

  if (env.IMAGEQUEUE_ZIP_PATH) {
    const zip = new Blob([await readFile(env.IMAGEQUEUE_ZIP_PATH)], { type: 'application/zip' });
    const uploaded = await client.uploadZip({ file: zip, filename: 'photos.zip', projectId: PROJECT, priority: 8,
      options: { format: 'png' } });
    const done = await client.waitForBatch(uploaded.batchId, { timeoutMs: WAIT_MS, intervalMs: 300 });
    assert.equal(done.batch.status, 'completed');
    const entries = [];
    for await (const row of client.batchResults(uploaded.batchId)) entries.push(row);
    assert.ok(entries.length >= 1 && entries.every((row) => row.status === 'completed' && row.outputUrl.endsWith('.png')));
  }
});

test('records are listed a page at a time; a job is canceled while it runs', { skip, timeout: WAIT_MS }, async () => {
  const first = await client.listRecords({ projectId: PROJECT, limit: 2 });
  assert.equal(first.records.length, 2);
  first.records.forEach((row) => assertDeclared(row, 'RecordRow'));
  assert.equal(typeof first.nextCursor, 'string');
  const second = await client.listRecords({ projectId: PROJECT, limit: 2, cursor: first.nextCursor });
  assert.ok(second.records.every((row) => !first.records.some((seen) => seen.recordId === row.recordId)));
  if (env.IMAGEQUEUE_SLOW_PHOTO_URL) {
    // The photo takes seconds to answer: the job is canceled while a worker runs it.
    const queued = await queueAPI.queueBackgroundRemoval(`js-cancel-${RUN}`, PROJECT, env.IMAGEQUEUE_SLOW_PHOTO_URL);
    const deadline = Date.now() + 30_000;
    while ((await client.job(queued.jobId)).state !== 'active') {
      assert.ok(Date.now() < deadline, 'the job never became active');
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const canceled = await queueAPI.cancelJob(queued.jobId);
    assertDeclared(canceled, 'JobCanceled');
    assert.equal(canceled.state, 'canceled');
    assert.equal(canceled.previousState, 'active');
    const ended = await client.waitForJob(queued.jobId, { timeoutMs: 60_000 });
    assert.equal(ended.state, 'canceled', `canceled (was ${canceled.previousState}), then: ${JSON.stringify(ended)}`);
    const error = await queueAPI.pollJobUntilComplete(queued.jobId, 10_000).catch((e) => e);
    assert.equal(error.code, 'JOB_CANCELED');
    assert.equal((await queueAPI.getRecord(`js-cancel-${RUN}`)).status, 'canceled');
  }
});

test('stats and health', { skip }, async () => {
  const stats = await queueAPI.getQueueStats();
  assertDeclared(stats, 'QueueStats');
  assert.ok(stats.backgroundRemoval.completed + stats.faceCrop.completed + stats.faceCrop.failed >= 1);
  const batchStats = await client.batchQueueStats();
  assertDeclared(batchStats.stats, 'BatchQueueStatsBody');
  const health = await queueAPI.getWorkerHealth();
  assertDeclared(health, 'Health');
  assert.ok(['healthy', 'degraded'].includes(health.status), JSON.stringify(health));
  assert.equal((await client.livez()).status, 'alive');
});
