// The OpenAPI check itself: it passes on a client that matches a document and names each kind of
// mismatch. (tests/integration/test_js_client.py runs it on the service's real document, and on
// doctored copies of it.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';

import { DEFAULT_DTS, checkDocument, parseDts } from '../scripts/check-openapi.mjs';
import { ROUTES } from '../src/routes.js';

const DTS = `
export type Colour = 'red' | 'green';
export interface Thing { id: string; colour?: Colour | null; parts: Part[]; sizes?: { [k: string]: Size } }
export interface Part { name: string }
export interface Size { w: number }
export interface ThingRequest { name: string; note?: string }
export interface ListQuery { limit?: number }
export declare class ImageQueueClient {
  thing(id: string): Promise<Thing>;
  makeThing(body: ThingRequest, options?: { idempotencyKey?: string }): Promise<Thing>;
}
`;
const ROUTES_OK = {
  thing: { method: 'GET', path: '/things/{id}', response: 'Thing', query: 'ListQuery' },
  makeThing: { method: 'POST', path: '/things', request: 'ThingRequest', response: 'Thing' },
};

function documentFor() {
  return {
    openapi: '3.0.3',
    paths: {
      '/things/{id}': { get: {
        parameters: [{ name: 'id', in: 'path', required: true }, { name: 'limit', in: 'query', schema: { type: 'integer' } }],
        responses: { 200: { description: 'ok', content: { 'application/json': { schema: { $ref: '#/components/schemas/Thing' } } } } },
      } },
      '/things': { post: {
        requestBody: { content: { 'application/json': { schema: { $ref: '#/components/schemas/ThingRequest' } } } },
        responses: { 202: { description: 'ok', content: { 'application/json': { schema: { $ref: '#/components/schemas/Thing' } } } },
          400: { $ref: '#/components/responses/E400' } },
      } },
      '/admin/things': { get: { security: [{ AdminBasic: [] }], responses: { 200: { description: 'ok',
        content: { 'application/json': { schema: { type: 'object', properties: { secret: { type: 'string' } } } } } } } } },
    },
    components: {
      responses: { E400: { description: 'bad', content: { 'application/json': { schema: { type: 'object' } } } } },
      schemas: {
        Thing: { type: 'object', required: ['id', 'parts'], properties: {
          id: { type: 'string' },
          colour: { type: 'string', enum: ['red', 'green', null], nullable: true },
          parts: { type: 'array', items: { type: 'object', required: ['name'], properties: { name: { type: 'string' } } } },
          sizes: { type: 'object', additionalProperties: { type: 'object', properties: { w: { type: 'number' } } } },
        } },
        ThingRequest: { type: 'object', required: ['name'], properties: { name: { type: 'string' }, note: { type: 'string' } } },
      },
    },
  };
}

function check(doc = documentFor(), { dts = DTS, routes = ROUTES_OK } = {}) {
  return checkDocument(doc, { dtsText: dts, routes, operatorSecurity: ['AdminBasic'] }).problems;
}

test('a client that matches the document passes (operators\' routes left out)', () => {
  assert.deepEqual(check(), []);
});

test('a field of an answer, of a nested array item or of a map value missing from the types fails', () => {
  const doc = documentFor();
  doc.components.schemas.Thing.properties.weight = { type: 'number' };
  doc.components.schemas.Thing.properties.parts.items.properties.colourCode = { type: 'string' };
  doc.components.schemas.Thing.properties.sizes.additionalProperties.properties.h = { type: 'number' };
  const problems = check(doc);
  assert.equal(problems.length, 6, problems.join('\n')); // GET and POST both answer Thing
  assert.ok(problems.some((p) => /thing answer \(Thing\)\.weight: not declared in Thing/.test(p)));
  assert.ok(problems.some((p) => /parts\[\]\.colourCode: not declared in Part/.test(p)));
  assert.ok(problems.some((p) => /sizes\{\}\.h: not declared in Size/.test(p)));
});

test('a request field, a required field, null and an enum value are checked', () => {
  const doc = documentFor();
  doc.components.schemas.ThingRequest.properties.tags = { type: 'array', items: { type: 'string' } };
  doc.components.schemas.ThingRequest.required.push('note');
  doc.components.schemas.Thing.properties.colour.enum.splice(2, 0, 'blue');
  doc.components.schemas.Thing.properties.id.nullable = true;
  const problems = check(doc).join('\n');
  assert.match(problems, /makeThing request \(ThingRequest\)\.tags: not declared in ThingRequest/);
  assert.match(problems, /ThingRequest\)\.note: required by the document, optional in ThingRequest/);
  assert.match(problems, /\.colour: enum value\(s\) blue missing/);
  assert.match(problems, /\.id: nullable in the document, Thing lacks \| null/);
});

test('an operation without a client method, a method without an operation and a query parameter fail', () => {
  const doc = documentFor();
  doc.paths['/things/{id}'].delete = { responses: { 200: { description: 'ok' } } };
  doc.paths['/things/{id}'].get.parameters.push({ name: 'cursor', in: 'query', schema: { type: 'string' } });
  const routes = { ...ROUTES_OK, gone: { method: 'GET', path: '/gone' } };
  const problems = check(doc, { routes }).join('\n');
  assert.match(problems, /DELETE \/things\/\{id\}.*no client method/);
  assert.match(problems, /routes\.gone: GET \/gone is not an operation of the document/);
  assert.match(problems, /thing query \(ListQuery\)\.cursor: not declared in ListQuery/);
});

test('a method missing from the class or returning another type fails', () => {
  const dts = DTS.replace('thing(id: string): Promise<Thing>;', 'thing(id: string): Promise<Part>;')
    .replace(/makeThing\(.*\n/, '\n');
  const problems = check(documentFor(), { dts }).join('\n');
  assert.match(problems, /ImageQueueClient\.thing does not return Thing/);
  assert.match(problems, /ImageQueueClient\.makeThing is not declared in index\.d\.ts/);
});

test('the package\'s own declarations: a field dropped from JobQueued is caught', async () => {
  const dts = await readFile(DEFAULT_DTS, 'utf8');
  const { types, classes } = parseDts(dts);
  assert.ok(types.get('JobQueued').fields.has('statusUrl'));
  assert.ok(classes.get('ImageQueueClient').has('cropFace'));
  const finished = { type: 'object', required: ['id', 'state'], properties: { id: { type: 'string' }, state: { type: 'string' } } };
  const doc = {
    paths: { '/api/image-queue/crop-face-queue': { post: { responses: {
      200: { description: 'Finished', content: { 'application/json': { schema: finished } } },
      202: { description: 'Queued', content: {
        'application/json': { schema: { type: 'object', required: ['jobId', 'statusUrl'],
          properties: { jobId: { type: 'string' }, statusUrl: { type: 'string' } } } } } } } } } },
  };
  const routes = { cropFace: { ...ROUTES.cropFace, form: undefined } };
  assert.deepEqual(checkDocument(doc, { dtsText: dts, routes }).problems, []);
  const doctored = dts.replace(/\n\s*statusUrl: string;/, '\n');
  assert.deepEqual(checkDocument(doc, { dtsText: doctored, routes }).problems,
    ['cropFace answer 202 (JobQueued).statusUrl: not declared in JobQueued (index.d.ts)']);
  // The 200 answer (`wait`: the finished job) is checked against JobFinished, and the return type names both.
  finished.properties.doctored = { type: 'string' };
  assert.deepEqual(checkDocument(doc, { dtsText: dts, routes }).problems,
    ['cropFace answer 200 (JobFinished).doctored: not declared in JobFinished (index.d.ts)']);
  delete finished.properties.doctored;
  const narrowed = dts.replace('Promise<JobQueued | JobFinished>;', 'Promise<JobQueued>;');
  assert.match(checkDocument(doc, { dtsText: narrowed, routes }).problems.join('\n'),
    /ImageQueueClient\.cropFace does not return JobFinished/);
});

test('a route taking JSON and a multipart form checks the form against its own type', () => {
  const doc = documentFor();
  doc.paths['/things'].post.requestBody.content['multipart/form-data'] = { schema: { type: 'object', required: ['file'],
    properties: { file: { type: 'string', format: 'binary' }, name: { type: 'string' } } } };
  const dts = `${DTS}\nexport interface ThingUpload { file: Blob; name?: string }\n`;
  assert.match(check(doc, { dts }).join('\n'), /POST \/things: the document also takes multipart\/form-data; routes\.makeThing names no form type/);
  const routes = { ...ROUTES_OK, makeThing: { ...ROUTES_OK.makeThing, form: 'ThingUpload' } };
  assert.deepEqual(check(doc, { dts, routes }), []);
  doc.paths['/things'].post.requestBody.content['multipart/form-data'].schema.properties.doctored = { type: 'string' };
  assert.deepEqual(check(doc, { dts, routes }), ['makeThing form (ThingUpload).doctored: not declared in ThingUpload (index.d.ts)']);
});

test('a repeated form part (files[]) is declared as the array field without []', () => {
  const doc = documentFor();
  doc.paths['/things'].post.requestBody.content['multipart/form-data'] = { schema: { type: 'object', required: ['files[]'],
    properties: { 'files[]': { type: 'array', items: { type: 'string', format: 'binary' } }, name: { type: 'string' } } } };
  const routes = { ...ROUTES_OK, makeThing: { ...ROUTES_OK.makeThing, form: 'ThingsUpload' } };
  const dts = `${DTS}\nexport interface ThingsUpload { files: Blob[]; name?: string }\n`;
  assert.deepEqual(check(doc, { dts, routes }), []);
  assert.deepEqual(check(doc, { dts: dts.replace('files: Blob[]', 'files?: Blob[]'), routes }),
    ['makeThing form (ThingsUpload).files[]: required by the document, optional in ThingsUpload']);
  assert.deepEqual(check(doc, { dts: dts.replace('files: Blob[]; ', ''), routes }),
    ['makeThing form (ThingsUpload).files[]: not declared in ThingsUpload (index.d.ts) (as files)']);
});
