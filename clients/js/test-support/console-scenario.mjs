// The console in headless Chromium against a live stack, step by step (tests/integration/test_console.py
// runs it and checks what it reports). Environment:
//   CONSOLE_URL   the console, e.g. http://127.0.0.1:8000/console/
//   CONSOLE_KEY   a vendor's API key;  CONSOLE_BATCH  a batch of that vendor, still running at the start
//   CONSOLE_PHOTO a photo with a face (a file path), for "try it"
//   CONSOLE_OUT   a folder: screenshots, the downloaded ZIP, report.json
//   CHROMIUM      the browser (default: chromium)
// Prints each step; exits 1 with the failing step's error.
import { mkdir, readdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';

import { launch } from './cdp.mjs';

const env = process.env;
const OUT = env.CONSOLE_OUT;
const BATCH = env.CONSOLE_BATCH;
const report = { steps: [], pageErrors: [] };
const js = JSON.stringify;

function step(name, data = {}) {
  report.steps.push({ name, ...data });
  console.log(`step: ${name} ${js(data)}`);
}

/** Every <img> under `selector`: loaded, and its natural size. */
function imagesOf(selector) {
  return `[...document.querySelectorAll(${js(`${selector} img`)})].map((img) => ({
    src: img.getAttribute('src'), alt: img.alt, complete: img.complete, w: img.naturalWidth, h: img.naturalHeight }))`;
}

function allLoaded(selector) {
  return `(() => { const imgs = [...document.querySelectorAll(${js(`${selector} img`)})];
    return imgs.length > 0 && imgs.every((img) => img.complete && img.naturalWidth > 0); })()`;
}

async function downloaded(dir, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const names = (await readdir(dir)).filter((name) => name.endsWith('.zip'));
    if (names.length) {
      const file = path.join(dir, names[0]);
      return { file, size: (await stat(file)).size };
    }
    if (Date.now() > deadline) throw new Error(`no ZIP downloaded into ${dir} in ${timeoutMs} ms`);
    await new Promise((resolve) => { setTimeout(resolve, 250); });
  }
}

async function main() {
  const downloads = path.join(OUT, 'downloads');
  await mkdir(downloads, { recursive: true });
  const browser = await launch({ executable: env.CHROMIUM || 'chromium', userDataDir: path.join(OUT, 'profile') });
  try {
    await browser.send('Browser.setDownloadBehavior', { behavior: 'allow', downloadPath: downloads });
    const page = await browser.newPage();
    await page.viewport(1280, 900);
    await page.goto(env.CONSOLE_URL);

    // 1. Sign-in: a wrong key says so; the right one lists the batches.
    await page.waitFor('!document.getElementById("signin").hidden', { what: 'the sign-in form' });
    await page.evaluate(`document.getElementById('api-key').value = 'iq_wrong_key_000000';
      document.getElementById('signin-form').requestSubmit()`);
    const wrong = await page.waitFor('document.getElementById("signin-error").textContent', { what: 'the wrong-key message' });
    step('wrong key', { message: wrong });
    await page.evaluate(`document.getElementById('api-key').value = ${js(env.CONSOLE_KEY)};
      document.getElementById('signin-form').requestSubmit()`);
    const row = `document.querySelector('[data-batch-id=${js(BATCH)}]')`;
    await page.waitFor(`!document.getElementById('batches').hidden && ${row}`, { what: 'the batch in the list' });
    const stored = await page.evaluate('Object.keys(sessionStorage)');
    const firstStatus = await page.evaluate(`${row}.dataset.status`);
    step('signed in', { sessionStorage: stored, firstStatus });

    // 2. The batch list: progress bar, counts, ETA, status, until the batch finishes.
    const seen = new Set([firstStatus]);
    const bars = [];
    const deadline = Date.now() + 150_000;
    for (;;) {
      const state = await page.evaluate(`(() => { const li = ${row}; const bar = li.querySelector('progress');
        return { status: li.dataset.status, value: bar.value, max: bar.max, label: bar.getAttribute('aria-label'),
                 counts: li.querySelector('.counts').textContent }; })()`);
      seen.add(state.status);
      bars.push(state);
      if (['completed', 'completed_with_errors', 'failed', 'canceled'].includes(state.status)) break;
      if (Date.now() > deadline) throw new Error(`the batch did not finish in the list: ${js(state)}`);
      await new Promise((resolve) => { setTimeout(resolve, 500); });
    }
    step('batch finished in the list', { statuses: [...seen], first: bars[0], last: bars.at(-1), polls: bars.length });
    await page.screenshot(path.join(OUT, 'batches-1280.png'));

    // 3. Its grid, opened with the keyboard (focus the link, Enter): images loaded, filters.
    await page.evaluate(`${row}.querySelector('a').focus()`);
    await page.press('Enter');
    await page.waitFor(`!document.getElementById('batch').hidden && document.querySelectorAll('#grid li').length > 0`,
      { what: 'the batch grid' });
    await page.waitFor(allLoaded('#grid'), { what: 'the grid images to load', timeoutMs: 30_000 });
    const grid = await page.evaluate(`({ items: [...document.querySelectorAll('#grid li')].map((li) => ({
        status: li.dataset.status, text: li.querySelector('.caption').textContent,
        boxes: li.querySelectorAll('svg rect').length,
        // the first face box on screen lies inside its (preview) image and is smaller than it
        boxInImage: (() => {
          const rect = li.querySelector('svg rect');
          const img = li.querySelector('.overlay-wrap img');
          if (!rect || !img) return null;
          const a = rect.getBoundingClientRect();
          const b = img.getBoundingClientRect();
          return a.width > 2 && a.width < b.width && a.left >= b.left - 1 && a.right <= b.right + 1
            && a.top >= b.top - 1 && a.bottom <= b.bottom + 1;
        })() })),
      images: ${imagesOf('#grid')},
      statusOptions: [...document.querySelectorAll('#filter-status option')].map((o) => o.value),
      codeOptions: [...document.querySelectorAll('#filter-code option')].map((o) => o.value),
      summary: document.getElementById('batch-summary').textContent })`);
    step('grid', grid);
    // Filter to the failed images: each shows its error code and message.
    let failed = null;
    if (grid.statusOptions.includes('failed')) {
      await page.evaluate(`(() => { const s = document.getElementById('filter-status'); s.value = 'failed';
        s.dispatchEvent(new Event('change')); })()`);
      failed = await page.evaluate(`[...document.querySelectorAll('#grid li')].map((li) => ({ status: li.dataset.status,
        why: li.querySelector('.why')?.textContent ?? null }))`);
      await page.evaluate(`(() => { const s = document.getElementById('filter-status'); s.value = '';
        s.dispatchEvent(new Event('change')); })()`);
    }
    step('filtered to failed', { failed });
    await page.waitFor(allLoaded('#grid'), { what: 'the grid images to load again' });
    await page.screenshot(path.join(OUT, 'grid-1280.png'));
    await page.viewport(390, 844, true);
    await page.waitFor(allLoaded('#grid'), { what: 'the grid images at 390 px' });
    const narrow = await page.evaluate('({ scrollWidth: document.documentElement.scrollWidth, innerWidth })');
    await page.screenshot(path.join(OUT, 'grid-390.png'));
    step('grid at 390 px', narrow);
    await page.viewport(1280, 900);

    // 4. The results ZIP, downloaded by the browser.
    await page.evaluate(`document.getElementById('batch-zip').click()`);
    const zip = await downloaded(downloads);
    const zipMessage = await page.waitFor(`/ZIP downloaded/.test(document.getElementById('status').textContent)
      && document.getElementById('status').textContent`, { what: 'the ZIP message' });
    step('zip', { ...zip, message: zipMessage });

    // 5. Try it: a face crop (passport) and a background removal of a picked photo, with wait.
    await page.evaluate(`document.getElementById('tab-try').click()`);
    await page.waitFor(`!document.getElementById('try').hidden`, { what: 'the try-it view' });
    await page.setFiles('#try-file', [env.CONSOLE_PHOTO]);
    await page.waitFor(`document.getElementById('try-file-name').textContent`, { what: 'the picked file' });
    const tries = {};
    for (const [operation, mode] of [['cropFace', 'passport'], ['removeBg', null]]) {
      await page.evaluate(`(() => {
        document.querySelector('input[name=operation][value=${operation}]').click();
        ${mode ? `document.getElementById('try-mode').value = '${mode}';` : ''}
        document.getElementById('try-json').textContent = '';
        document.getElementById('try-output-frame').replaceChildren();
        document.getElementById('try-form').requestSubmit(); })()`);
      await page.waitFor(`document.getElementById('try-json').textContent || document.getElementById('try-error').textContent`,
        { what: `the ${operation} answer`, timeoutMs: 120_000 });
      await page.waitFor(allLoaded('#try-result'), { what: `the ${operation} images`, timeoutMs: 30_000 });
      tries[operation] = await page.evaluate(`({ error: document.getElementById('try-error').textContent,
        job: JSON.parse(document.getElementById('try-json').textContent || 'null'),
        images: ${imagesOf('#try-result')},
        boxes: document.querySelectorAll('#try-source-frame svg rect').length,
        landmarks: document.querySelectorAll('#try-source-frame svg circle').length,
        checker: document.getElementById('try-output-frame').classList.contains('checker') })`);
      step(`try ${operation}`, { ...tries[operation], job: { state: tries[operation].job?.state,
        photoUrl: tries[operation].job?.result?.photoUrl } });
      if (operation === 'cropFace') await page.screenshot(path.join(OUT, 'try-1280.png'));
    }
    report.tries = tries;
    await page.viewport(390, 844, true);
    await page.waitFor(allLoaded('#try-result'), { what: 'the try-it images at 390 px' });
    report.tryNarrow = await page.evaluate('({ scrollWidth: document.documentElement.scrollWidth, innerWidth })');
    await page.screenshot(path.join(OUT, 'try-390.png'));

    // 6. Accessible basics: every image has an alt text, every control a label.
    report.a11y = await page.evaluate(`({
      imagesWithoutAlt: [...document.querySelectorAll('img')].filter((img) => !img.alt.trim()).length,
      unlabelled: [...document.querySelectorAll('input, select')].filter((c) => c.type !== 'radio'
        && !(c.labels && c.labels.length) && !c.getAttribute('aria-label')).map((c) => c.id),
      unnamedButtons: [...document.querySelectorAll('button')].filter((b) => !b.textContent.trim()).length })`);
    report.grid = grid;
    report.failed = failed;
    report.narrow = narrow;
    report.zip = zip;
    report.wrongKey = wrong;
    report.statuses = [...seen];
    report.bars = bars;
    report.pageErrors = page.errors;
  } finally {
    await browser.close();
    await writeFile(path.join(OUT, 'report.json'), JSON.stringify(report, null, 2));
  }
}

main().catch((error) => {
  console.error(`console scenario failed: ${error.stack ?? error}`);
  process.exitCode = 1;
});
