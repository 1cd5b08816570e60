// image-queue console: batches, their results as pictures, and "try it" on one photo.
// Plain ES modules, no build step: the JavaScript client (clients/js/src) is served as is under
// ./client/, and everything here goes through it and the public JSON API with the vendor's key.
import {
  FINAL_BATCH_STATUSES, ImageQueueClient, ImageQueueError, createQueueAPI,
} from './client/index.js';

const KEY_STORAGE = 'image-queue.console.apiKey';
const LIST_POLL_MS = 4_000; // while a batch is running: 15 reads a minute, far below the read limit
const IDLE_POLL_MS = 20_000; // when every batch is final
const BATCH_POLL_MS = 4_000;
const RESULTS_REFRESH_MS = 8_000; // a running batch's results are read again at most this often
const GRID_PAGE = 60;
const TRY_WAIT_S = 25;
const TRY_PROJECT = 'console';

const $ = (id) => document.getElementById(id);
const views = ['signin', 'batches', 'batch', 'try'];

let client = null;
let queueAPI = null;
let listTimer = null;
let batchTimer = null;
let viewToken = 0; // bumps on every navigation: stale polls stop themselves
const samples = new Map(); // batchId -> first progress seen {t, processed}, for the ETA

// --- small helpers --------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

function say(text) {
  $('status').textContent = text;
}

function describe(error) {
  if (error instanceof ImageQueueError) {
    const retry = error.retryAfter ? ` Retry in ${Math.ceil(error.retryAfter)} s.` : '';
    return `${error.message} (${error.code}${error.status ? `, HTTP ${error.status}` : ''}).${retry}`;
  }
  return String(error?.message ?? error);
}

function refused(error) {
  return error instanceof ImageQueueError && error.status === 401;
}

function duration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return '';
  if (seconds < 60) return `${Math.max(1, Math.round(seconds))} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

function when(timestamp) {
  if (!timestamp) return '';
  const date = new Date(timestamp);
  return Number.isNaN(date.getTime()) ? timestamp : date.toLocaleString();
}

function isFinal(batch) {
  return FINAL_BATCH_STATUSES.includes(batch.status);
}

/** processed, failed, skipped, canceled and pending of a batch (processed + canceled = imageCount). */
function counts(batch) {
  const total = batch.imageCount ?? batch.progress?.total ?? 0;
  const processed = batch.progress?.processed ?? 0;
  const canceled = batch.canceled ?? 0;
  return {
    total, processed, failed: batch.progress?.failed ?? 0, skipped: batch.skipped ?? 0, canceled,
    pending: Math.max(0, total - processed - canceled),
  };
}

/** Seconds left, from the progress seen since this page first saw the batch (else since it was created). */
function eta(batch) {
  if (isFinal(batch)) return null;
  const { processed, pending } = counts(batch);
  if (!pending) return null;
  const now = Date.now();
  const first = samples.get(batch.batchId);
  if (!first) samples.set(batch.batchId, { t: now, processed });
  let rate = 0;
  if (first && processed > first.processed && now - first.t > 2_000) {
    rate = (processed - first.processed) / ((now - first.t) / 1000);
  } else if (batch.createdAt && processed > 0) {
    const elapsed = (now - new Date(batch.createdAt).getTime()) / 1000;
    if (elapsed > 0) rate = processed / elapsed;
  }
  return rate > 0 ? pending / rate : null;
}

function progressBar(batch, label) {
  const { total, processed, canceled } = counts(batch);
  return el('progress', { max: Math.max(total, 1), value: Math.min(processed + canceled, Math.max(total, 1)),
    'aria-label': label, title: `${batch.progressPercent ?? 0} %` });
}

function countLine(batch) {
  const c = counts(batch);
  const left = eta(batch);
  return el('div', { class: 'counts' },
    el('span', { text: `${c.processed} / ${c.total} processed` }),
    el('span', { text: `${c.failed} failed` }),
    el('span', { text: `${c.skipped} skipped` }),
    el('span', { text: `${c.pending} pending` }),
    c.canceled ? el('span', { text: `${c.canceled} canceled` }) : null,
    left !== null ? el('span', { class: 'eta', text: `ETA ${duration(left)}` }) : null);
}

function pill(status) {
  return el('span', { class: `pill ${status}`, text: status.replaceAll('_', ' ') });
}

// --- views and navigation -------------------------------------------------------------------

function show(view) {
  for (const name of views) $(name).hidden = name !== view;
  $('nav').hidden = view === 'signin';
  $('tab-batches').setAttribute('aria-current', view === 'batches' || view === 'batch' ? 'page' : 'false');
  $('tab-try').setAttribute('aria-current', view === 'try' ? 'page' : 'false');
}

function stopPolling() {
  viewToken += 1;
  clearTimeout(listTimer);
  clearTimeout(batchTimer);
}

function route() {
  stopPolling();
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (!key) {
    client = null;
    show('signin');
    $('api-key').focus();
    return;
  }
  if (!client || client.apiKey !== key) {
    client = new ImageQueueClient({ baseUrl: '', apiKey: key, retries: 1 });
    queueAPI = createQueueAPI(client);
    offerIdPhotos(client);
  }
  const hash = location.hash.replace(/^#/, '');
  if (hash.startsWith('batch/')) {
    show('batch');
    openBatch(decodeURIComponent(hash.slice('batch/'.length)));
  } else if (hash === 'try') {
    show('try');
    say('');
  } else {
    show('batches');
    loadBatches(viewToken);
  }
}

/** "ID photo" is offered when this service has the route (its OpenAPI document lists it). */
async function offerIdPhotos(forClient) {
  try {
    const doc = await forClient.openapi();
    $('try-idphoto').hidden = !doc.paths?.[forClient.url('idPhoto').replace(forClient.baseUrl, '')];
  } catch {
    $('try-idphoto').hidden = true;
  }
}

function signOut(message = '') {
  sessionStorage.removeItem(KEY_STORAGE);
  samples.clear();
  $('signin-error').textContent = message;
  if (location.hash) history.replaceState(null, '', location.pathname);
  say('');
  route();
}

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

// --- sign-in -----------------------------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  const key = $('api-key').value.trim();
  $('signin-error').textContent = '';
  if (!key) return;
  const probe = new ImageQueueClient({ baseUrl: '', apiKey: key, retries: 0 });
  say('Checking the key…');
  try {
    await probe.listBatches({ limit: 1 });
  } catch (error) {
    say('');
    $('signin-error').textContent = refused(error)
      ? `This API key was refused: ${error.message} (${error.code}).`
      : `Could not sign in: ${describe(error)}`;
    $('api-key').select();
    return;
  }
  sessionStorage.setItem(KEY_STORAGE, key);
  $('api-key').value = '';
  say('Signed in.');
  go('#batches');
}

// --- the batch list ------------------------------------------------------------------------

let nextCursor = null;

function batchRow(batch) {
  const c = counts(batch);
  const title = `Batch ${batch.batchId}`;
  return el('li', { class: 'batch', 'data-batch-id': batch.batchId, 'data-status': batch.status },
    el('div', {},
      el('h3', {}, el('a', { href: `#batch/${encodeURIComponent(batch.batchId)}`, text: batch.batchId })),
      el('div', { class: 'meta', text: [batch.projectId, batch.operation ?? 'cropFace',
        batch.operation === 'removeBg' ? null : batch.mode, when(batch.createdAt)].filter(Boolean).join(' · ') })),
    el('div', {}, progressBar(batch, `Progress of ${title}: ${c.processed} of ${c.total}`), countLine(batch)),
    el('div', {}, pill(batch.status)));
}

async function loadBatches(token, more = false) {
  let page;
  try {
    page = await client.listBatches({ limit: 50, cursor: more ? nextCursor ?? undefined : undefined });
  } catch (error) {
    if (token !== viewToken) return;
    if (refused(error)) return signOut('Your API key was refused; sign in again.');
    say(`Could not read the batches: ${describe(error)}`);
    listTimer = setTimeout(() => loadBatches(token), Math.max(IDLE_POLL_MS, (error.retryAfter ?? 0) * 1000));
    return;
  }
  if (token !== viewToken) return;
  const list = $('batch-list');
  const focused = document.activeElement?.closest?.('[data-batch-id]')?.dataset.batchId;
  const rows = page.batches.map(batchRow);
  if (more) list.append(...rows);
  else list.replaceChildren(...rows);
  if (!more) nextCursor = page.nextCursor;
  $('batches-more').hidden = !nextCursor;
  $('batches-empty').hidden = list.children.length > 0;
  $('batches-updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
  if (focused) list.querySelector(`[data-batch-id="${CSS.escape(focused)}"] a`)?.focus();
  if (more) return;
  const running = page.batches.some((batch) => !isFinal(batch));
  clearTimeout(listTimer);
  listTimer = setTimeout(() => {
    if (document.hidden) return loadBatches(token); // polls on; the timer is throttled in a hidden tab anyway
    return loadBatches(token);
  }, running ? LIST_POLL_MS : IDLE_POLL_MS);
}

// --- one batch ---------------------------------------------------------------------------

const current = { batch: null, rows: [], sources: new Map(), shown: GRID_PAGE, resultsAt: 0, processedAt: -1 };

async function openBatch(batchId) {
  const token = viewToken;
  Object.assign(current, { batch: null, rows: [], sources: new Map(), shown: GRID_PAGE, resultsAt: 0, processedAt: -1 });
  $('batch-title').textContent = `Batch ${batchId}`;
  $('batch-summary').replaceChildren(el('span', { class: 'muted', text: 'Loading…' }));
  $('grid').replaceChildren();
  $('filter-status').replaceChildren(el('option', { value: '', text: 'all' }));
  $('filter-code').replaceChildren(el('option', { value: '', text: 'any' }));
  await pollBatch(batchId, token);
}

async function pollBatch(batchId, token) {
  let batch;
  try {
    batch = (await client.batchStatus(batchId)).batch;
  } catch (error) {
    if (token !== viewToken) return;
    if (refused(error)) return signOut('Your API key was refused; sign in again.');
    $('batch-summary').replaceChildren(el('p', { class: 'error', role: 'alert', text: describe(error) }));
    if (error.status !== 404) batchTimer = setTimeout(() => pollBatch(batchId, token), BATCH_POLL_MS * 3);
    return;
  }
  if (token !== viewToken) return;
  current.batch = batch;
  renderSummary(batch);
  const { processed } = counts(batch);
  const due = Date.now() - current.resultsAt >= RESULTS_REFRESH_MS || isFinal(batch);
  if (processed !== current.processedAt && due) {
    current.processedAt = processed;
    await loadResults(batch, token);
  }
  if (!isFinal(batch) && token === viewToken) batchTimer = setTimeout(() => pollBatch(batchId, token), BATCH_POLL_MS);
}

function renderSummary(batch) {
  const c = counts(batch);
  $('batch-summary').replaceChildren(...[
    pill(batch.status),
    el('span', { class: 'muted', text: [batch.projectId, batch.operation ?? 'cropFace',
      batch.operation === 'removeBg' ? null : batch.mode, `priority ${batch.priority ?? ''}`,
      when(batch.createdAt)].filter(Boolean).join(' · ') }),
    progressBar(batch, `Progress: ${c.processed} of ${c.total}`),
    countLine(batch),
    batch.error ? el('span', { class: 'error', text: `${batch.error.code}: ${batch.error.message ?? ''}` }) : null,
  ].filter(Boolean));
  $('batch-cancel').disabled = isFinal(batch);
  $('batch-zip').disabled = c.processed === 0;
}

async function loadResults(batch, token) {
  const rows = [];
  try {
    for await (const row of client.batchResults(batch.batchId)) rows.push(row);
  } catch (error) {
    if (token === viewToken) say(`Could not read the results: ${describe(error)}`);
    return;
  }
  if (token !== viewToken) return;
  current.rows = rows;
  current.resultsAt = Date.now();
  // URL batches: the source photos' URLs are on the vendor's record rows (one page, newest first).
  if (rows.some((row) => row.entry === null && !current.sources.has(row.recordId))) {
    try {
      const page = await client.listRecords({ projectId: batch.projectId, limit: 200 });
      for (const record of page.records) if (record.sourceUrl) current.sources.set(record.recordId, record.sourceUrl);
    } catch {
      // the outputs are still shown
    }
  }
  if (token !== viewToken) return;
  fillFilters(rows);
  renderGrid();
}

function fillFilters(rows) {
  for (const [id, values, empty] of [['filter-status', rows.map((r) => r.status), 'all'],
    ['filter-code', rows.map((r) => r.errorCode).filter(Boolean), 'any']]) {
    const select = $(id);
    const chosen = select.value;
    const tally = new Map();
    for (const value of values) tally.set(value, (tally.get(value) ?? 0) + 1);
    select.replaceChildren(el('option', { value: '', text: empty }),
      ...[...tally].sort().map(([value, n]) => el('option', { value, text: `${value} (${n})` })));
    select.value = tally.has(chosen) ? chosen : '';
  }
}

function filtered() {
  const status = $('filter-status').value;
  const code = $('filter-code').value;
  return current.rows.filter((row) => (!status || row.status === status) && (!code || row.errorCode === code));
}

function renderGrid() {
  const rows = filtered();
  const visible = rows.slice(0, current.shown);
  $('grid').replaceChildren(...visible.map(gridItem));
  $('grid-more').hidden = rows.length <= visible.length;
  $('filter-count').textContent = `${visible.length} of ${rows.length} shown (${current.rows.length} in the batch)`;
}

/**
 * An image with an SVG drawn over it, once it has loaded, in the image's own pixels or, for a
 * preview, in `space` (the full photo's width and height: the preview has its shape).
 */
function overlaid(img, draw, space = null) {
  const layer = svg('svg', { class: 'overlay', 'aria-hidden': 'true', preserveAspectRatio: 'none' });
  img.addEventListener('load', () => {
    const width = space?.width ?? img.naturalWidth;
    const height = space?.height ?? img.naturalHeight;
    layer.setAttribute('viewBox', `0 0 ${width} ${height}`);
    layer.replaceChildren();
    draw(layer, Math.max(width, height) / 100); // 1 % of the image, in its pixels
  });
  return el('div', { class: 'overlay-wrap' }, img, layer);
}

function faceShapes(layer, unit, faces) {
  faces.forEach((face, index) => {
    const box = face.box ?? face;
    if (!box || box.width === undefined) return;
    layer.append(svg('rect', { x: box.x, y: box.y, width: box.width, height: box.height, fill: 'none',
      stroke: index === 0 ? '#00e676' : '#ffd54f', 'stroke-width': 2, 'vector-effect': 'non-scaling-stroke' }));
    for (const point of Object.values(face.landmarks ?? {})) {
      layer.append(svg('circle', { cx: point.x, cy: point.y, r: unit, fill: '#ff4081' }));
    }
  });
}

function gridItem(row) {
  const removeBg = current.batch?.operation === 'removeBg';
  const kind = { removeBg: 'Cut-out', idPhoto: 'ID photo' }[current.batch?.operation] ?? 'Face crop';
  const label = row.entry ?? row.recordId;
  const sourceUrl = current.sources.get(row.recordId);
  let source;
  if (row.sourceThumbnailUrl) {
    // The worker's preview (THUMBNAIL_MAX_PX): small, and kept after a ZIP's source is deleted. The face
    // box is in the photo's pixels (sourceWidth x sourceHeight); the preview has the photo's shape, so
    // the overlay is drawn in those pixels and stretched over it.
    const img = el('img', { src: row.sourceThumbnailUrl, alt: `Source photo of ${label} (thumbnail)`,
      decoding: 'async' });
    const size = row.sourceWidth && row.sourceHeight ? { width: row.sourceWidth, height: row.sourceHeight } : null;
    source = row.faceBox && size
      ? overlaid(img, (layer, unit) => faceShapes(layer, unit, row.faces?.length ? row.faces : [{ box: row.faceBox }]), size)
      : img;
  } else if (sourceUrl && /^(https?:)?\//.test(sourceUrl)) {
    const img = el('img', { src: sourceUrl, alt: `Source photo of ${label}`, decoding: 'async' });
    source = row.faceBox ? overlaid(img, (layer, unit) => faceShapes(layer, unit, [{ box: row.faceBox }])) : img;
    const shown = source;
    img.addEventListener('error', () => shown.replaceWith(el('div', { class: 'none', text: 'the source URL did not load' })));
  } else {
    source = el('div', { class: 'none', text: row.entry
      ? `ZIP entry ${row.entry} (the source is deleted once processed)` : 'source not available' });
  }
  const outputSrc = row.thumbnailUrl ?? row.outputUrl;
  const output = outputSrc
    ? el('a', { href: row.outputUrl ?? outputSrc, target: '_blank', rel: 'noreferrer', title: 'open the full output' },
      el('img', { src: outputSrc, alt: `${kind} of ${label}${row.thumbnailUrl ? ' (thumbnail)' : ''}`,
        decoding: 'async' }))
    : el('div', { class: 'none', text: row.status === 'pending' ? 'not processed yet' : 'no output' });
  const faces = row.faceCount !== null && row.faceCount !== undefined ? ` · ${row.faceCount} face(s)` : '';
  return el('li', { class: 'item', 'data-status': row.status },
    el('div', { class: 'pair' },
      el('figure', { class: 'frame' }, source),
      el('figure', { class: `frame${removeBg ? ' checker' : ''}` }, output)),
    el('div', { class: 'caption' },
      pill(row.status), ' ', el('strong', { text: row.recordId }), row.entry ? ` · ${row.entry}` : '', faces,
      row.errorCode ? el('div', { class: 'why', text: `${row.errorCode}: ${row.errorMessage ?? ''}` }) : null,
      sourceUrl ? el('div', { class: 'muted' }, 'source: ', el('a', { href: sourceUrl, text: sourceUrl, rel: 'noreferrer' }))
        : null));
}

async function downloadZip() {
  const batch = current.batch;
  if (!batch) return;
  $('batch-zip').disabled = true;
  say('Preparing the results ZIP…');
  try {
    const blob = await queueAPI.downloadResultsZip(batch.batchId, { filename: `batch-${batch.batchId}-results.zip` });
    say(`Results ZIP downloaded (${Math.ceil(blob.size / 1024)} KB).`);
  } catch (error) {
    say(`Could not download the results ZIP: ${describe(error)}`);
  } finally {
    $('batch-zip').disabled = false;
  }
}

async function cancelBatch() {
  const batch = current.batch;
  if (!batch || isFinal(batch)) return;
  if (!window.confirm(`Cancel batch ${batch.batchId}? Its pending images will not be processed.`)) return;
  try {
    const answer = await queueAPI.cancelBatch(batch.batchId);
    say(`Batch canceled: ${answer.canceledNow} pending image(s) will not run.`);
    current.batch = answer.batch;
    renderSummary(answer.batch);
    await loadResults(answer.batch, viewToken);
  } catch (error) {
    say(`Could not cancel: ${describe(error)}`);
  }
}

// --- try it ------------------------------------------------------------------------------

let picked = null;
let pickedUrl = null;

function pick(file) {
  if (!file) return;
  picked = file;
  $('try-file-name').textContent = `${file.name || 'photo'} (${Math.ceil(file.size / 1024)} KB)`;
  $('try-file').required = false;
}

function operation() {
  return document.querySelector('input[name="operation"]:checked')?.value ?? 'cropFace';
}

async function runTry(event) {
  event.preventDefault();
  if (!picked) {
    $('try-error').textContent = 'Pick or drop a photo first.';
    return;
  }
  const op = operation();
  const recordId = `console-${Date.now().toString(36)}`;
  $('try-error').textContent = '';
  $('try-run').disabled = true;
  say('Sending the photo…');
  let job;
  try {
    const call = { wait: TRY_WAIT_S };
    let answer;
    if (op === 'removeBg') answer = await queueAPI.queueBackgroundRemoval(recordId, TRY_PROJECT, picked, null, call);
    else if (op === 'idPhoto') answer = await queueAPI.queueIdPhoto(recordId, TRY_PROJECT, picked, $('try-spec').value, null, call);
    else answer = await queueAPI.queueFaceCrop(recordId, TRY_PROJECT, picked, $('try-mode').value, null, call);
    job = answer.state ? answer : await client.waitForJob(answer.jobId, {
      timeoutMs: 180_000, onUpdate: (status) => say(`Job ${status.state} (${status.progress} %)…`) });
  } catch (error) {
    say('');
    $('try-error').textContent = `It did not work: ${describe(error)}`;
    $('try-run').disabled = false;
    return;
  }
  $('try-run').disabled = false;
  showTry(job, op);
}

function showTry(job, op) {
  if (pickedUrl) URL.revokeObjectURL(pickedUrl);
  pickedUrl = URL.createObjectURL(picked);
  const result = job.result ?? {};
  const faces = result.faces ?? (result.faceBox ? [{ box: result.faceBox, landmarks: null }] : []);
  const source = el('img', { src: pickedUrl, alt: 'The photo you sent' });
  $('try-source-frame').replaceChildren(faces.length
    ? overlaid(source, (layer, unit) => faceShapes(layer, unit, faces)) : source);
  $('try-faces').textContent = faces.length ? ` · ${faces.length} face(s): box and landmarks drawn` : '';
  const frame = $('try-output-frame');
  frame.classList.toggle('checker', op === 'removeBg');
  if (job.state === 'completed' && result.photoUrl) {
    frame.replaceChildren(el('img', { src: result.photoUrl, id: 'try-output',
      alt: op === 'removeBg' ? 'The cut-out (transparent background shown as a checkerboard)' : `The ${op === 'idPhoto' ? 'ID photo' : 'face crop'}` }));
    say(`Done: ${job.state}.`);
  } else {
    const why = job.error ? `${job.error.code}: ${job.error.message}` : job.state;
    frame.replaceChildren(el('div', { class: 'none', text: why }));
    $('try-error').textContent = `The job ${job.state}: ${why}`;
    say('');
  }
  $('try-json').textContent = JSON.stringify(job, null, 2);
  $('try-result').hidden = false;
}

// --- wiring ------------------------------------------------------------------------------

function wire() {
  $('signin-form').addEventListener('submit', signIn);
  $('sign-out').addEventListener('click', () => signOut('Signed out.'));
  $('tab-batches').addEventListener('click', () => go('#batches'));
  $('tab-try').addEventListener('click', () => go('#try'));
  $('batch-back').addEventListener('click', () => go('#batches'));
  $('batches-more').addEventListener('click', () => loadBatches(viewToken, true));
  $('batch-zip').addEventListener('click', downloadZip);
  $('batch-cancel').addEventListener('click', cancelBatch);
  $('filter-status').addEventListener('change', () => { current.shown = GRID_PAGE; renderGrid(); });
  $('filter-code').addEventListener('change', () => { current.shown = GRID_PAGE; renderGrid(); });
  $('grid-more').addEventListener('click', () => { current.shown += GRID_PAGE; renderGrid(); });
  $('try-form').addEventListener('submit', runTry);
  $('try-file').addEventListener('change', (event) => pick(event.target.files[0]));
  for (const radio of document.querySelectorAll('input[name="operation"]')) {
    radio.addEventListener('change', () => {
      $('try-mode').disabled = operation() !== 'cropFace';
      $('try-spec').disabled = operation() !== 'idPhoto';
    });
  }
  const drop = $('drop');
  drop.addEventListener('dragover', (event) => { event.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (event) => {
    event.preventDefault();
    drop.classList.remove('over');
    pick(event.dataTransfer?.files?.[0]);
  });
  window.addEventListener('hashchange', route);
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && client && !$('batches').hidden) { stopPolling(); loadBatches(viewToken); }
  });
  route();
}

wire();
