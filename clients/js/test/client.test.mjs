// Unit tests of the client against a scripted local HTTP server (no network, no service).
import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  ImageQueueClient, ImageQueueError, JobFailedError, WaitTimeoutError, createQueueAPI, newIdempotencyKey, parseRetryAfter,
} from '../src/index.js';
import { apiError, json, startServer } from '../test-support/server.mjs';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const QUEUED = {
  success: true, jobId: 'j1', recordId: 'r1', message: 'Job queued for processing', estimatedTime: '30-60 seconds',
  estimatedSeconds: 45, statusUrl: '/api/image-queue/job/j1',
};

async function withServer(handler, fn) {
  const server = await startServer(handler);
  try {
    await fn(server);
  } finally {
    await server.close();
  }
}

function client(url, options = {}) {
  return new ImageQueueClient({ baseUrl: url, apiKey: 'iq_test', backoffMs: 20, ...options });
}

test('a submission is a POST of JSON with the key and a fresh Idempotency-Key per call', async () => {
  await withServer((req, body, res) => json(res, 202, QUEUED), async (server) => {
    const api = client(server.url);
    const answer = await api.cropFace({ recordId: 'r1', projectId: 'p1', photoUrl: 'https://x.test/a.jpg', mode: 'passport',
      options: { padding: 0.3 }, callbackUrl: undefined });
    assert.deepEqual(answer, QUEUED);
    await api.cropFace({ recordId: 'r2', projectId: 'p1', photoUrl: 'https://x.test/a.jpg', mode: 'square' });
    const [first, second] = server.requests;
    assert.equal(first.method, 'POST');
    assert.equal(first.url, '/api/image-queue/crop-face-queue');
    assert.equal(first.headers['x-api-key'], 'iq_test');
    assert.equal(first.headers['content-type'], 'application/json');
    assert.match(first.headers['idempotency-key'], UUID);
    assert.notEqual(first.headers['idempotency-key'], second.headers['idempotency-key']);
    assert.deepEqual(JSON.parse(first.body), { recordId: 'r1', projectId: 'p1', photoUrl: 'https://x.test/a.jpg',
      mode: 'passport', options: { padding: 0.3 } });
  });
});

test('503 and 429 are retried after their Retry-After with the same Idempotency-Key', async () => {
  const script = [[503, '0.3'], [429, '0.2']];
  await withServer((req, body, res) => {
    const next = script.shift();
    if (next) return apiError(res, next[0], next[0] === 503 ? 'SERVICE_UNAVAILABLE' : 'RATE_LIMITED', 'wait', null,
      { 'Retry-After': next[1] });
    return json(res, 202, QUEUED);
  }, async (server) => {
    const answer = await client(server.url).removeBackground({ recordId: 'r1', projectId: 'p1', photoUrl: 'https://x.test/a.jpg' },
      { idempotencyKey: 'my-key-1' });
    assert.equal(answer.jobId, 'j1');
    const [a, b, c] = server.requests;
    assert.equal(server.requests.length, 3);
    assert.deepEqual([a, b, c].map((r) => r.headers['idempotency-key']), ['my-key-1', 'my-key-1', 'my-key-1']);
    assert.ok(b.at - a.at >= 280, `waited ${b.at - a.at} ms, Retry-After said 300`);
    assert.ok(c.at - b.at >= 180, `waited ${c.at - b.at} ms, Retry-After said 200`);
  });
});

test('a Retry-After longer than maxRetryWaitMs is not waited for: the error says how long', async () => {
  const details = { limit: 'bulk', policy: '10 per 1 hour', per: 'vendor', retryAfter: 1712 };
  await withServer((req, body, res) => apiError(res, 429, 'RATE_LIMITED', 'Too many requests: the bulk limit allows 10 per 1 hour per vendor.',
    details, { 'Retry-After': '1712' }), async (server) => {
    const started = Date.now();
    const error = await client(server.url).bulkCropFace({ recordIds: ['a'], photoUrls: ['https://x.test/a.jpg'], projectId: 'p',
      mode: 'square' }).catch((e) => e);
    assert.ok(error instanceof ImageQueueError);
    assert.equal(error.status, 429);
    assert.equal(error.code, 'RATE_LIMITED');
    assert.equal(error.retryAfter, 1712);
    assert.deepEqual(error.details, details);
    assert.match(error.message, /bulk limit/);
    assert.equal(server.requests.length, 1);
    assert.ok(Date.now() - started < 1000);
  });
});

test('a 400 throws at once: status, code, the API message and the field it names', async () => {
  await withServer((req, body, res) => apiError(res, 400, 'VALIDATION_ERROR', "Invalid 'mode': must be one of square, passport, idcard",
    { field: 'mode', reason: 'must be one of square, passport, idcard' }), async (server) => {
    const error = await client(server.url).cropFace({ recordId: 'r', projectId: 'p', photoUrl: 'https://x.test/a.jpg',
      mode: /** @type {any} */ ('selfie') }).catch((e) => e);
    assert.ok(error instanceof ImageQueueError);
    assert.equal(error.status, 400);
    assert.equal(error.code, 'VALIDATION_ERROR');
    assert.equal(error.field, 'mode');
    assert.equal(error.retryAfter, null);
    assert.match(error.message, /Invalid 'mode'/);
    assert.match(String(error), /HTTP 400 VALIDATION_ERROR/);
    assert.equal(server.requests.length, 1);
  });
});

test('409 IDEMPOTENCY_KEY_IN_USE and a proxy 502 are retried; a non-JSON error keeps its status', async () => {
  const script = ['409', '502'];
  await withServer((req, body, res) => {
    const next = script.shift();
    if (next === '409') return apiError(res, 409, 'IDEMPOTENCY_KEY_IN_USE', 'still running', null, { 'Retry-After': '0.05' });
    if (next === '502') return res.writeHead(502, { 'Content-Type': 'text/html' }).end('<h1>Bad gateway</h1>');
    return json(res, 202, { success: true, batchId: 'b1', status: 'queued', imageCount: 1, queued: 1, statusUrl: '/s' });
  }, async (server) => {
    const answer = await client(server.url).addImages({ projectId: 'p', images: [{ recordId: 'r', imageUrl: 'https://x.test/a.jpg' }] });
    assert.equal(answer.batchId, 'b1');
    assert.equal(new Set(server.requests.map((r) => r.headers['idempotency-key'])).size, 1);
  });
  await withServer((req, body, res) => res.writeHead(502).end('<h1>Bad gateway</h1>'), async (server) => {
    const error = await client(server.url, { retries: 1 }).queueStats().catch((e) => e);
    assert.equal(error.status, 502);
    assert.equal(error.code, 'HTTP_502');
    assert.equal(server.requests.length, 2);
  });
});

test('network errors are retried with backoff, then thrown as NETWORK_ERROR; a slow answer is REQUEST_TIMEOUT', async () => {
  const keys = [];
  let calls = 0;
  const failing = async (url, init) => {
    calls += 1;
    keys.push(init.headers['Idempotency-Key']);
    throw new TypeError('fetch failed', { cause: { code: 'ECONNREFUSED' } });
  };
  const api = new ImageQueueClient({ baseUrl: 'http://127.0.0.1:9', apiKey: 'k', fetch: failing, backoffMs: 10, retries: 2 });
  const error = await api.cropFace({ recordId: 'r', projectId: 'p', photoUrl: 'https://x.test/a.jpg', mode: 'square' }).catch((e) => e);
  assert.equal(error.code, 'NETWORK_ERROR');
  assert.equal(error.status, null);
  assert.match(error.message, /ECONNREFUSED/);
  assert.equal(calls, 3);
  assert.equal(new Set(keys).size, 1);
  await withServer((req, body, res) => setTimeout(() => json(res, 200, {}), 500), async (server) => {
    const slow = await client(server.url, { timeoutMs: 100, retries: 0 }).queueStats().catch((e) => e);
    assert.equal(slow.code, 'REQUEST_TIMEOUT');
  });
});

test('backoff is exponential, jittered between 50 and 100 %, and capped', () => {
  const low = new ImageQueueClient({ apiKey: 'k', backoffMs: 500, maxBackoffMs: 10_000, random: () => 0 });
  const high = new ImageQueueClient({ apiKey: 'k', backoffMs: 500, maxBackoffMs: 10_000, random: () => 0.999999 });
  assert.deepEqual([0, 1, 2, 3].map((n) => low.backoff(n)), [250, 500, 1000, 2000]);
  assert.ok(Math.abs(high.backoff(2) - 2000) < 1);
  assert.ok(high.backoff(20) <= 10_000 && low.backoff(20) >= 5_000);
  assert.equal(parseRetryAfter('7'), 7);
  assert.equal(parseRetryAfter(''), null);
  assert.ok(parseRetryAfter(new Date(Date.now() + 5000).toUTCString()) > 3);
});

function jobServer(states, { failWith, limitedOnce } = {}) {
  let polls = 0;
  return (req, body, res) => {
    polls += 1;
    if (limitedOnce && polls === 2) return apiError(res, 429, 'RATE_LIMITED', 'slow down', null, { 'Retry-After': '0.25' });
    const state = states.shift() ?? 'completed';
    const job = { success: true, id: 'j1', state, progress: state === 'completed' ? 100 : 30, data: { recordId: 'r1' },
      attempts: 1, maxAttempts: 4 };
    if (state === 'completed') job.result = { success: true, recordId: 'r1', photoUrl: 'https://cdn.test/r1.png', width: 10, height: 10 };
    if (state === 'failed') job.error = failWith;
    json(res, 200, job);
  };
}

test('waitForJob polls until final, honouring a 429 Retry-After between polls', async () => {
  await withServer(jobServer(['waiting', 'active', 'active'], { limitedOnce: true }), async (server) => {
    const seen = [];
    const job = await client(server.url).waitForJob('j1', { intervalMs: 10, onUpdate: (s) => seen.push(s.state) });
    assert.equal(job.state, 'completed');
    assert.deepEqual(seen, ['waiting', 'active', 'active', 'completed']);
    const gap = server.requests[2].at - server.requests[1].at;
    assert.ok(gap >= 230, `polled again ${gap} ms after the 429, Retry-After said 250`);
    assert.ok(server.requests.every((r) => r.method === 'GET' && r.url === '/api/image-queue/job/j1'));
  });
});

test('pollJobUntilComplete: resolves with the completed job, rejects a failed one and a timeout', async () => {
  await withServer(jobServer(['active']), async (server) => {
    const queueAPI = createQueueAPI({ baseUrl: server.url, apiKey: 'k' });
    const job = await queueAPI.pollJobUntilComplete('j1', 5000, { intervalMs: 10 });
    assert.equal(job.result.photoUrl, 'https://cdn.test/r1.png');
  });
  await withServer(jobServer(['failed'], { failWith: { code: 'NO_FACE', message: 'No face found', permanent: true, final: true } }),
    async (server) => {
      const queueAPI = createQueueAPI({ baseUrl: server.url, apiKey: 'k' });
      const error = await queueAPI.pollJobUntilComplete('j1', 5000).catch((e) => e);
      assert.ok(error instanceof JobFailedError && error instanceof ImageQueueError);
      assert.equal(error.code, 'NO_FACE');
      assert.equal(error.message, 'No face found');
      assert.equal(error.job.state, 'failed');
    });
  await withServer(jobServer(Array(100).fill('active')), async (server) => {
    const queueAPI = createQueueAPI({ baseUrl: server.url, apiKey: 'k' });
    const error = await queueAPI.pollJobUntilComplete('j1', 300, { intervalMs: 20 }).catch((e) => e);
    assert.ok(error instanceof WaitTimeoutError);
    assert.equal(error.code, 'WAIT_TIMEOUT');
    assert.equal(error.last.state, 'active');
  });
});

test('an abort stops polling with the caller\'s reason', async () => {
  await withServer(jobServer(Array(100).fill('active')), async (server) => {
    const controller = new AbortController();
    setTimeout(() => controller.abort(new Error('unmounted')), 150);
    const error = await client(server.url).waitForJob('j1', { intervalMs: 20, signal: controller.signal }).catch((e) => e);
    assert.equal(error.message, 'unmounted');
  });
});

test('uploadZip sends multipart: the fields, then the file', async () => {
  let form;
  await withServer(async (req, body, res) => {
    form = await new Response(body, { headers: { 'content-type': req.headers['content-type'] } }).formData();
    json(res, 202, { success: true, batchId: 'b1', status: 'queued', imageCount: null, queued: 0, statusUrl: '/api/batch/status/b1' });
  }, async (server) => {
    const zip = new Uint8Array([0x50, 0x4b, 0x03, 0x04, 1, 2, 3]);
    const answer = await client(server.url).uploadZip({ file: zip, filename: 'photos.zip', projectId: 'p1', priority: 7,
      mode: 'passport', options: { format: 'png' } });
    assert.equal(answer.batchId, 'b1');
    const [seen] = server.requests;
    assert.match(seen.headers['content-type'], /^multipart\/form-data; boundary=/);
    assert.match(seen.headers['idempotency-key'], UUID);
    assert.equal(form.get('projectId'), 'p1');
    assert.equal(form.get('priority'), '7');
    assert.equal(form.get('mode'), 'passport');
    assert.deepEqual(JSON.parse(form.get('options')), { format: 'png' });
    const file = form.get('file');
    assert.equal(file.name, 'photos.zip');
    assert.deepEqual(new Uint8Array(await file.arrayBuffer()), zip);
    assert.ok(seen.body.indexOf('name="file"') > seen.body.indexOf('name="projectId"'));
  });
});

test('batchResults yields JSON lines as they stream; batchResultsCsv gives the text', async () => {
  const rows = [1, 2, 3].map((seq) => ({ seq, recordId: `r${seq}`, entry: null, status: 'completed' }));
  await withServer(async (req, body, res) => {
    if (req.url.endsWith('format=csv')) return res.writeHead(200, { 'Content-Type': 'text/csv' }).end('seq,recordId\n1,r1\n');
    res.writeHead(200, { 'Content-Type': 'application/x-ndjson' });
    const text = rows.map((row) => JSON.stringify(row)).join('\n') + '\n';
    res.write(text.slice(0, 10)); // a line split across chunks
    await new Promise((resolve) => setTimeout(resolve, 20));
    res.end(text.slice(10));
  }, async (server) => {
    const api = client(server.url);
    const seen = [];
    for await (const row of api.batchResults('b/1')) seen.push(row);
    assert.deepEqual(seen, rows);
    assert.equal(server.requests[0].url, '/api/batch/b%2F1/results?format=jsonl');
    assert.equal(await api.batchResultsCsv('b1'), 'seq,recordId\n1,r1\n');
  });
});

test('health answers its 503 body; public routes and downloads never send the key', async () => {
  await withServer((req, body, res) => {
    if (req.url === '/api/worker/health') return json(res, 503, { success: false, status: 'unhealthy' });
    if (req.url.startsWith('/files/')) return res.writeHead(200, { 'Content-Type': 'image/png' }).end(Buffer.from([1, 2, 3]));
    return json(res, 200, { success: true, status: 'alive' });
  }, async (server) => {
    const api = client(server.url);
    assert.equal((await api.health()).status, 'unhealthy');
    assert.equal((await api.livez()).status, 'alive');
    const blob = await api.downloadResult(`${server.url}/files/acme/p1/r1/out.png`);
    assert.equal(blob.size, 3);
    await api.downloadResult('acme/p1/r 2/out.png');
    assert.equal(server.requests.at(-1).url, '/files/acme/p1/r%202/out.png');
    assert.ok(server.requests.every((r) => r.headers['x-api-key'] === undefined));
  });
});

test('queueAPI: the seed\'s positional calls become the API\'s bodies', async () => {
  await withServer((req, body, res) => json(res, 202, req.url.includes('bulk')
    ? { success: true, jobIds: ['a', 'b'], recordIds: ['r1', 'r2'], count: 2, message: 'm', estimatedTime: 't' } : QUEUED),
  async (server) => {
    const queueAPI = createQueueAPI({ baseUrl: server.url, apiKey: 'k' });
    await queueAPI.queueBackgroundRemoval('r1', 'p1', 'https://x.test/a.jpg', { bgColor: '#ffffff' },
      { callbackUrl: 'https://hooks.test/iq', idempotencyKey: 'k-1' });
    await queueAPI.queueBulkBackgroundRemoval(['r1', 'r2'], 'p1', ['https://x.test/a.jpg', 'https://x.test/b.jpg']);
    await queueAPI.queueFaceCrop('r1', 'p1', 'https://x.test/a.jpg', 'passport');
    await queueAPI.queueBulkFaceCrop(['r1', 'r2'], 'p1', ['https://x.test/a.jpg', 'https://x.test/b.jpg']);
    const bodies = server.requests.map((r) => [r.url, JSON.parse(r.body)]);
    assert.deepEqual(bodies, [
      ['/api/image-queue/remove-bg-queue', { recordId: 'r1', projectId: 'p1', photoUrl: 'https://x.test/a.jpg',
        options: { bgColor: '#ffffff' }, callbackUrl: 'https://hooks.test/iq' }],
      ['/api/image-queue/bulk-remove-bg', { recordIds: ['r1', 'r2'], projectId: 'p1',
        photoUrls: ['https://x.test/a.jpg', 'https://x.test/b.jpg'] }],
      ['/api/image-queue/crop-face-queue', { recordId: 'r1', projectId: 'p1', photoUrl: 'https://x.test/a.jpg', mode: 'passport' }],
      ['/api/image-queue/bulk-crop-face', { recordIds: ['r1', 'r2'], projectId: 'p1',
        photoUrls: ['https://x.test/a.jpg', 'https://x.test/b.jpg'], mode: 'square' }],
    ]);
    assert.equal(server.requests[0].headers['idempotency-key'], 'k-1');
  });
});

test('a vendor route without a key says so before sending anything', async () => {
  const api = new ImageQueueClient({ baseUrl: 'http://127.0.0.1:9', apiKey: '', fetch: () => assert.fail('sent') });
  const error = await api.job('j1').catch((e) => e);
  assert.equal(error.code, 'NO_API_KEY');
});

test('lists, cancels and the results ZIP: methods, paths, query and keys', async () => {
  await withServer((req, body, res) => {
    if (req.url.startsWith('/api/image-queue/records')) return json(res, 200, { success: true, records: [], nextCursor: null, limit: 20 });
    if (req.url.startsWith('/api/batch?')) return json(res, 200, { success: true, batches: [], nextCursor: 'c2', limit: 50 });
    if (req.method === 'DELETE') return json(res, 200, { success: true, id: 'j1', state: 'canceled', previousState: 'waiting' });
    if (req.url.endsWith('/cancel')) return json(res, 200, { success: true, batch: { batchId: 'b1' }, canceledNow: 3 });
    if (req.url.endsWith('/results.zip')) return res.writeHead(200, { 'Content-Type': 'application/zip' }).end(Buffer.from('PK\x03\x04zip'));
    return apiError(res, 404, 'NOT_FOUND', 'no');
  }, async (server) => {
    const api = client(server.url);
    assert.equal((await api.listRecords({ projectId: 'p 1', status: 'failed', limit: 20 })).limit, 20);
    assert.equal((await api.listBatches({ cursor: 'c1' })).nextCursor, 'c2');
    assert.equal((await api.cancelJob('j1')).previousState, 'waiting');
    assert.equal((await api.cancelBatch('b1')).canceledNow, 3);
    assert.equal((await api.batchResultsZip('b1')).size, 7);
    const [records, batches, job, batch] = server.requests;
    assert.equal(records.url, '/api/image-queue/records?projectId=p+1&status=failed&limit=20');
    assert.equal(batches.url, '/api/batch?cursor=c1');
    assert.equal(job.method, 'DELETE');
    assert.equal(job.url, '/api/image-queue/job/j1');
    assert.equal(job.headers['idempotency-key'], undefined);
    assert.equal(batch.method, 'POST');
    assert.match(batch.headers['idempotency-key'], UUID);
    assert.equal(server.requests.at(-1).url, '/api/batch/b1/results.zip');
  });
});

test('a canceled job ends the wait: waitForJob answers it, pollJobUntilComplete rejects with JOB_CANCELED', async () => {
  await withServer(jobServer(['active', 'canceled', 'canceled']), async (server) => {
    const api = client(server.url);
    assert.equal((await api.waitForJob('j1', { intervalMs: 10 })).state, 'canceled');
    const error = await createQueueAPI(api).pollJobUntilComplete('j1').catch((e) => e);
    assert.ok(error instanceof JobFailedError);
    assert.equal(error.code, 'JOB_CANCELED');
  });
});

test('Idempotency-Keys are UUIDs without randomUUID (plain-http pages) and without a global crypto (Node 18)', async (t) => {
  const saved = Object.getOwnPropertyDescriptor(globalThis, 'crypto');
  t.after(() => Object.defineProperty(globalThis, 'crypto', saved));
  const real = globalThis.crypto;
  Object.defineProperty(globalThis, 'crypto', { value: { getRandomValues: (a) => real.getRandomValues(a) }, configurable: true });
  assert.match(await newIdempotencyKey(), UUID);
  Object.defineProperty(globalThis, 'crypto', { value: undefined, configurable: true });
  assert.match(await newIdempotencyKey(), UUID);
});

test('waitForBatch polls the batch until a final status and answers the status answer', async () => {
  const statuses = ['ingesting', 'processing', 'completed_with_errors'];
  await withServer((req, body, res) => json(res, 200, { success: true, batch: { batchId: 'b1', status: statuses.shift() ?? 'completed',
    progress: { processed: 2, total: 2, failed: 1 } } }), async (server) => {
    const seen = [];
    const answer = await client(server.url).waitForBatch('b1', { intervalMs: 10, onUpdate: (a) => seen.push(a.batch.status) });
    assert.equal(answer.batch.status, 'completed_with_errors');
    assert.deepEqual(seen, ['ingesting', 'processing', 'completed_with_errors']);
    assert.ok(server.requests.every((r) => r.url === '/api/batch/status/b1'));
  });
});

test('a photo sent itself: queueFaceCrop and queueBackgroundRemoval with a File send multipart, with wait', async () => {
  const forms = [];
  const finished = { success: true, id: 'j1', jobId: 'j1', recordId: 'r1', state: 'completed', progress: 100, data: {},
    result: { photoUrl: '/files/crops/r1.jpg' }, attempts: 1, maxAttempts: 3 };
  await withServer(async (req, body, res) => {
    forms.push(await new Response(body, { headers: { 'content-type': req.headers['content-type'] } }).formData());
    return req.url.endsWith('crop-face-queue') ? json(res, 200, finished) : json(res, 202, QUEUED);
  }, async (server) => {
    const api = createQueueAPI(client(server.url));
    const photo = new File([new Uint8Array([0xff, 0xd8, 0xff, 0xe0, 1, 2])], 'me.jpg', { type: 'image/jpeg' });
    const crop = await api.queueFaceCrop('r1', 'p1', photo, 'passport', { format: 'png' }, { wait: 20 });
    assert.equal(crop.state, 'completed'); // 200: the finished job
    assert.equal(crop.result.photoUrl, '/files/crops/r1.jpg');
    const queued = await api.queueBackgroundRemoval('r2', 'p1', new Uint8Array([1, 2, 3]));
    assert.equal(queued.jobId, 'j1');
    assert.equal(queued.state, undefined); // 202: queued
    const [cropForm, bgForm] = forms;
    assert.equal(cropForm.get('recordId'), 'r1');
    assert.equal(cropForm.get('mode'), 'passport');
    assert.equal(cropForm.get('wait'), '20');
    assert.deepEqual(JSON.parse(cropForm.get('options')), { format: 'png' });
    assert.equal(cropForm.get('file').name, 'me.jpg');
    assert.equal(cropForm.get('photoUrl'), null);
    assert.equal(bgForm.get('file').name, 'photo');
    assert.equal(bgForm.get('options'), null);
    assert.equal(bgForm.get('wait'), null);
    const [first, second] = server.requests;
    assert.equal(first.url, '/api/image-queue/crop-face-queue');
    assert.match(first.headers['content-type'], /^multipart\/form-data; boundary=/);
    assert.match(first.headers['idempotency-key'], UUID);
    assert.equal(second.url, '/api/image-queue/remove-bg-queue');
  });
});

test('wait in JSON; downloadResultsZip and the batch calls of queueAPI', async () => {
  await withServer((req, body, res) => {
    if (req.url.endsWith('/results.zip')) return res.writeHead(200, { 'Content-Type': 'application/zip' }).end(Buffer.from('PK\x03\x04zip'));
    if (req.url.startsWith('/api/batch/status/')) return json(res, 200, { success: true, batch: { batchId: 'b1', status: 'completed' } });
    if (req.url.startsWith('/api/batch?')) return json(res, 200, { success: true, batches: [], nextCursor: null, limit: 5 });
    return json(res, 202, QUEUED);
  }, async (server) => {
    const api = createQueueAPI(client(server.url));
    await api.queueBackgroundRemoval('r1', 'p1', 'https://x.test/a.jpg', null, { wait: 5 });
    assert.deepEqual(JSON.parse(server.requests[0].body), { recordId: 'r1', projectId: 'p1', photoUrl: 'https://x.test/a.jpg', wait: 5 });
    const zip = await api.downloadResultsZip('b1');
    assert.equal(zip.size, 7);
    assert.equal((await api.getBatchStatus('b1')).status, 'completed');
    assert.equal((await api.listBatches({ limit: 5 })).limit, 5);
    assert.equal(server.requests[1].url, '/api/batch/b1/results.zip');
    assert.equal(server.requests[3].url, '/api/batch?limit=5');
  });
});

test('ID photos: JSON with a spec, or the photo itself with a custom spec sent as JSON text', async () => {
  const forms = [];
  await withServer(async (req, body, res) => {
    if (req.headers['content-type'].startsWith('multipart/')) {
      forms.push(await new Response(body, { headers: { 'content-type': req.headers['content-type'] } }).formData());
    }
    return json(res, 202, QUEUED);
  }, async (server) => {
    const api = createQueueAPI(client(server.url));
    await api.queueIdPhoto('r1', 'p1', 'https://x.test/a.jpg', 'us', { maxBytes: 240000 });
    const custom = { widthMm: 35, heightMm: 45, dpi: 300, headMinMm: 32, headMaxMm: 36, eyeMinMm: 22.5, eyeMaxMm: 31.5 };
    await api.queueIdPhoto('r2', 'p1', new Blob([new Uint8Array([0xff, 0xd8])]), custom, null, { wait: 10 });
    await api.queueBulkIdPhoto(['r3'], 'p1', ['https://x.test/b.jpg']);
    const [single, upload, bulk] = server.requests;
    assert.equal(single.url, '/api/image-queue/id-photo-queue');
    assert.deepEqual(JSON.parse(single.body), { recordId: 'r1', projectId: 'p1', photoUrl: 'https://x.test/a.jpg', spec: 'us',
      options: { maxBytes: 240000 } });
    assert.equal(upload.url, '/api/image-queue/id-photo-queue');
    assert.deepEqual(JSON.parse(forms[0].get('spec')), custom);
    assert.equal(forms[0].get('wait'), '10');
    assert.equal(bulk.url, '/api/image-queue/bulk-id-photo');
    assert.deepEqual(JSON.parse(bulk.body), { recordIds: ['r3'], projectId: 'p1', photoUrls: ['https://x.test/b.jpg'], spec: 'icao' });
  });
});

test('usage: GET /api/usage with the key, projectId as a query parameter when given', async () => {
  const usage = { success: true, vendorId: 'acme', projectId: 'p 1', operations: {}, rateLimits: [{ category: 'reads',
    limit: '300/1 minute', source: 'default', windows: [{ limit: 300, per: '1 minute', remaining: 299, resetsInSeconds: 42 }] }] };
  await withServer((req, body, res) => json(res, 200, usage), async (server) => {
    const api = client(server.url);
    assert.deepEqual(await api.usage({ projectId: 'p 1' }), usage);
    await api.usage();
    const [one, all] = server.requests;
    assert.equal(one.method, 'GET');
    assert.equal(one.url, '/api/usage?projectId=p+1');
    assert.equal(one.headers['x-api-key'], 'iq_test');
    assert.equal(one.headers['idempotency-key'], undefined);
    assert.equal(all.url, '/api/usage');
  });
});

test('bulk calls with the photos themselves: multipart files[] in order, recordIds as JSON text; 200 with every job', async () => {
  const forms = [];
  const job = (id, recordId) => ({ success: true, id, jobId: id, recordId, state: 'completed', progress: 100, data: {},
    result: { photoUrl: `/files/crops/${recordId}.jpg` }, attempts: 1, maxAttempts: 3 });
  const finished = { success: true, count: 2, jobs: [job('j1', 'r1'), job('j2', 'r2')] };
  await withServer(async (req, body, res) => {
    if (req.headers['content-type'].startsWith('multipart/')) {
      forms.push(await new Response(body, { headers: { 'content-type': req.headers['content-type'] } }).formData());
    }
    return req.url.endsWith('bulk-crop-face') ? json(res, 200, finished)
      : json(res, 202, { success: true, jobIds: ['j3'], recordIds: ['r3'], count: 1, message: 'm', estimatedTime: 't' });
  }, async (server) => {
    const api = client(server.url);
    const first = new File([new Uint8Array([0xff, 0xd8, 1])], 'one.jpg', { type: 'image/jpeg' });
    const answer = await api.bulkCropFace({ recordIds: ['r1', 'r2'], projectId: 'p1', mode: 'passport',
      files: [first, new Uint8Array([0x89, 0x50, 2, 3])], options: { format: 'png' }, wait: 20 });
    assert.deepEqual(answer, finished); // 200: every job finished within the wait
    const queued = await api.bulkIdPhoto({ recordIds: ['r3'], projectId: 'p1', spec: 'us', files: [new Blob([new Uint8Array([9])])],
      filenames: ['three.jpg'] });
    assert.deepEqual(queued.jobIds, ['j3']); // 202: queued
    await api.bulkRemoveBackground({ recordIds: ['r4'], projectId: 'p1', photoUrls: ['https://x.test/a.jpg'], wait: 5 });
    const [crop, id, json202] = server.requests;
    assert.equal(crop.url, '/api/image-queue/bulk-crop-face');
    assert.match(crop.headers['content-type'], /^multipart\/form-data; boundary=/);
    assert.match(crop.headers['idempotency-key'], UUID);
    const [cropForm, idForm] = forms;
    assert.deepEqual(JSON.parse(cropForm.get('recordIds')), ['r1', 'r2']);
    assert.equal(cropForm.get('mode'), 'passport');
    assert.equal(cropForm.get('wait'), '20');
    assert.deepEqual(JSON.parse(cropForm.get('options')), { format: 'png' });
    assert.equal(cropForm.get('file'), null);
    assert.equal(cropForm.get('files'), null);
    const files = cropForm.getAll('files[]');
    assert.deepEqual(files.map((f) => f.name), ['one.jpg', 'photo-2']);
    assert.deepEqual(new Uint8Array(await files[0].arrayBuffer()), new Uint8Array([0xff, 0xd8, 1]));
    assert.deepEqual(new Uint8Array(await files[1].arrayBuffer()), new Uint8Array([0x89, 0x50, 2, 3]));
    const text = crop.body.toString('latin1');
    assert.ok(text.indexOf('name="files[]"') > text.indexOf('name="recordIds"'), 'the files come after the fields');
    assert.equal(id.url, '/api/image-queue/bulk-id-photo');
    assert.equal(idForm.get('spec'), 'us');
    assert.deepEqual(idForm.getAll('files[]').map((f) => f.name), ['three.jpg']);
    assert.equal(json202.headers['content-type'], 'application/json');
    assert.deepEqual(JSON.parse(json202.body), { recordIds: ['r4'], projectId: 'p1', photoUrls: ['https://x.test/a.jpg'], wait: 5 });
    assert.throws(() => api.bulkCropFace({ recordIds: ['r1'], projectId: 'p1', mode: 'square', files: 'nope' }), TypeError);
  });
});

test('queueAPI bulk calls take the photos themselves and wait', async () => {
  const forms = [];
  await withServer(async (req, body, res) => {
    forms.push(await new Response(body, { headers: { 'content-type': req.headers['content-type'] } }).formData());
    return json(res, 200, { success: true, count: 0, jobs: [] });
  }, async (server) => {
    const queueAPI = createQueueAPI(client(server.url));
    const photos = [new Blob([new Uint8Array([1])]), new Blob([new Uint8Array([2])])];
    assert.deepEqual((await queueAPI.queueBulkIdPhoto(['r1', 'r2'], 'p1', photos, 'icao', null, { wait: 10 })).jobs, []);
    await queueAPI.queueBulkBackgroundRemoval(['r1', 'r2'], 'p1', photos, { maxSide: 512 });
    const [idForm, bgForm] = forms;
    assert.equal(idForm.getAll('files[]').length, 2);
    assert.equal(idForm.get('spec'), 'icao');
    assert.equal(idForm.get('wait'), '10');
    assert.deepEqual(JSON.parse(bgForm.get('options')), { maxSide: 512 });
    assert.equal(bgForm.get('wait'), null);
    assert.deepEqual(server.requests.map((r) => r.url), ['/api/image-queue/bulk-id-photo', '/api/image-queue/bulk-remove-bg']);
  });
});
