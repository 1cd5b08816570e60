#!/usr/bin/env node
// Keeps the client true to the service's OpenAPI document.
//
//   node scripts/check-openapi.mjs <openapi.json | http://host/api/openapi.json> [--dts src/index.d.ts]
//
// Checks, and exits 1 listing every problem:
// * every operation (method + path) a vendor can call has an entry in src/routes.js and a
//   method of that name on ImageQueueClient (in client.js and in index.d.ts), and every entry
//   is an operation of the document (operators' routes and the HTML docs are left out:
//   OPERATOR_SECURITY, NOT_IN_CLIENT);
// * every field of each operation's request body, JSON answer and query parameters, nested
//   objects, array items and maps included, is declared in the TypeScript type the entry
//   names (and in the types its field types name), never optional where the document requires
//   it (and, for requests, never required where it does not), with `null` where the document
//   allows null, and with every enum value
//   where the TypeScript type is a union of string literals;
// * a route taking JSON and a multipart form (a photo sent itself) has a form type too, checked
//   the same way (a repeated form part `name[]`, e.g. a bulk call's `files[]`, is declared as
//   the array field `name`);
// * every 2xx JSON answer is checked (a route with `wait` answers 200 finished or 202 queued:
//   `responses` by status), and the method's declared return type names each answer's type.
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const DEFAULT_DTS = path.join(HERE, '..', 'src', 'index.d.ts');
const METHODS = ['get', 'put', 'post', 'delete', 'patch'];

// --- a small reader of the declaration file's conventions ----------------------------------

function stripComments(text) {
  return text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[\s;{}])\/\/[^\n]*/g, '$1');
}

/** Splits `text` at `separators` found outside (), {}, [], <>. */
function splitTopLevel(text, separators) {
  const parts = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < text.length; i += 1) {
    const ch = text[i];
    if ('({[<'.includes(ch)) depth += 1;
    else if (')}]'.includes(ch) || (ch === '>' && text[i - 1] !== '=')) depth -= 1;
    else if (depth === 0 && separators.includes(ch)) {
      parts.push(text.slice(start, i));
      start = i + 1;
    }
  }
  parts.push(text.slice(start));
  return parts.map((part) => part.trim()).filter(Boolean);
}

function matchingBrace(text, open) {
  let depth = 0;
  for (let i = open; i < text.length; i += 1) {
    if (text[i] === '{') depth += 1;
    else if (text[i] === '}') {
      depth -= 1;
      if (depth === 0) return i;
    }
  }
  throw new Error(`unbalanced braces from offset ${open}`);
}

/**
 * The declarations of a .d.ts written in this package's style.
 * @returns {{types: Map<string, {kind: string, fields: Map<string, {optional: boolean, type: string}>,
 *           extends: string[], text: string}>, classes: Map<string, Map<string, string>>}}
 */
export function parseDts(source) {
  const text = stripComments(source);
  const types = new Map();
  const classes = new Map();
  const head = /export\s+(?:declare\s+)?(interface|class|type)\s+([A-Za-z_$][\w$]*)/g;
  let match;
  while ((match = head.exec(text))) {
    const [, kind, name] = match;
    if (kind === 'type') {
      const eq = text.indexOf('=', head.lastIndex);
      const rest = text.slice(eq + 1);
      const body = splitTopLevel(rest, ';')[0];
      types.set(name, { kind: 'alias', fields: new Map(), extends: [], text: body });
      continue;
    }
    const open = text.indexOf('{', head.lastIndex);
    const close = matchingBrace(text, open);
    const heading = text.slice(head.lastIndex, open);
    const body = text.slice(open + 1, close);
    head.lastIndex = close;
    const members = splitTopLevel(body, ';\n');
    if (kind === 'class') {
      const methods = new Map();
      for (const member of members) {
        const method = /^(?:static\s+)?(?:async\s+)?\*?\s*([A-Za-z_$][\w$]*)\s*(?:<[^(]*>)?\s*\(/.exec(member);
        if (method) methods.set(method[1], member);
      }
      classes.set(name, methods);
      continue;
    }
    const fields = new Map();
    for (const member of members) {
      const field = /^(?:readonly\s+)?([A-Za-z_$][\w$]*)(\?)?\s*:\s*([\s\S]+)$/.exec(member);
      if (field) fields.set(field[1], { optional: Boolean(field[2]), type: field[3].trim() });
    }
    const ext = /extends\s+([\s\S]+)/.exec(heading);
    types.set(name, {
      kind: 'interface', fields, text: body,
      extends: ext ? ext[1].split(',').map((s) => s.trim().replace(/<[\s\S]*$/, '')) : [],
    });
  }
  return { types, classes };
}

function identifiers(expression, types) {
  return [...new Set(expression.match(/\b[A-Za-z_$][\w$]*\b/g) ?? [])].filter((id) => types.has(id));
}

/** Fields of the named types: an interface's own and inherited, an alias's parts'. */
function fieldsOf(names, types, seen = new Set()) {
  const fields = new Map();
  for (const name of names) {
    if (seen.has(name)) continue;
    seen.add(name);
    const type = types.get(name);
    if (!type) continue;
    if (type.kind === 'interface') {
      for (const [key, value] of fieldsOf(type.extends, types, seen)) fields.set(key, value);
      for (const [key, value] of type.fields) fields.set(key, value);
    } else {
      for (const [key, value] of fieldsOf(identifiers(type.text, types), types, seen)) {
        if (!fields.has(key)) fields.set(key, value);
      }
    }
  }
  return fields;
}

/** String literals a type expression allows, through aliases; empty when it allows any string. */
function literalsOf(expression, types, seen = new Set()) {
  const found = new Set([...expression.matchAll(/'([^']*)'|"([^"]*)"/g)].map((m) => m[1] ?? m[2]));
  for (const id of identifiers(expression, types)) {
    const type = types.get(id);
    if (type.kind === 'alias' && !seen.has(id)) {
      seen.add(id);
      for (const literal of literalsOf(type.text, types, seen)) found.add(literal);
    }
  }
  return found;
}

function allowsAnyString(expression, types, seen = new Set()) {
  if (/\bstring\b/.test(expression)) return true;
  return identifiers(expression, types).some((id) => {
    const type = types.get(id);
    if (type.kind !== 'alias' || seen.has(id)) return false;
    seen.add(id);
    return allowsAnyString(type.text, types, seen);
  });
}

// --- the document side --------------------------------------------------------------------

function resolveRef(doc, schema) {
  let current = schema;
  const seen = new Set();
  while (current && current.$ref) {
    if (seen.has(current.$ref)) throw new Error(`circular $ref ${current.$ref}`);
    seen.add(current.$ref);
    const parts = current.$ref.replace(/^#\//, '').split('/');
    current = parts.reduce((node, part) => node?.[part], doc);
    if (!current) throw new Error(`unresolved $ref ${[...seen].pop()}`);
  }
  return current ?? {};
}

/** A schema with $ref followed and allOf merged; `nullable` from any level. */
function flatten(doc, schema) {
  const resolved = resolveRef(doc, schema);
  let nullable = Boolean(schema?.nullable || resolved.nullable || (resolved.enum ?? []).includes(null));
  if (!resolved.allOf) return { ...resolved, nullable };
  const merged = { ...resolved, properties: { ...(resolved.properties ?? {}) }, required: [...(resolved.required ?? [])] };
  delete merged.allOf;
  for (const part of resolved.allOf) {
    const flat = flatten(doc, part);
    nullable ||= flat.nullable;
    Object.assign(merged.properties, flat.properties ?? {});
    merged.required.push(...(flat.required ?? []));
    for (const key of ['type', 'items', 'additionalProperties', 'enum', 'oneOf', 'anyOf']) {
      if (flat[key] !== undefined && merged[key] === undefined) merged[key] = flat[key];
    }
  }
  if (!Object.keys(merged.properties).length) delete merged.properties;
  return { ...merged, nullable };
}

function jsonSchemaOf(content) {
  if (!content) return null;
  const json = Object.keys(content).find((type) => /^application\/([\w.-]+\+)?json$/.test(type));
  return json ? content[json].schema ?? {} : null;
}

// --- the check ------------------------------------------------------------------------------

/**
 * @param {object} doc  the OpenAPI document
 * @param {{dtsText: string, routes: object, notInClient?: object, operatorSecurity?: string[],
 *          clientPrototype?: object, className?: string}} options
 * @returns {{problems: string[], operations: number, fields: number}}
 */
export function checkDocument(doc, options) {
  const { dtsText, routes, notInClient = {}, operatorSecurity = [], clientPrototype, className = 'ImageQueueClient' } = options;
  const { types, classes } = parseDts(dtsText);
  const methods = classes.get(className) ?? new Map();
  const problems = [];
  let fields = 0;
  let operations = 0;
  if (!classes.has(className)) problems.push(`index.d.ts declares no class ${className}`);

  function checkValue(schema, tsNames, where, mode) {
    // A component ($ref, or a nullable allOf around one) checks against the TypeScript type of
    // the same name when the field's type names it: `CropOptions | RemoveBgOptions` checks each
    // branch of a oneOf against its own interface.
    const ref = schema?.$ref ?? (schema?.allOf?.length === 1 ? schema.allOf[0].$ref : undefined);
    const component = ref?.split('/').pop();
    if (component && tsNames.length > 1 && tsNames.includes(component)) tsNames = [component];
    const flat = flatten(doc, schema);
    if (flat.properties) checkObject(flat, tsNames, where, mode);
    if (flat.items) checkValue(flat.items, tsNames, `${where}[]`, mode);
    if (flat.additionalProperties && typeof flat.additionalProperties === 'object') {
      checkValue(flat.additionalProperties, tsNames, `${where}{}`, mode);
    }
    for (const branch of [...(flat.oneOf ?? []), ...(flat.anyOf ?? [])]) checkValue(branch, tsNames, where, mode);
  }

  function checkObject(schema, tsNames, where, mode) {
    if (!tsNames.length) {
      problems.push(`${where}: an object with fields ${Object.keys(schema.properties).join(', ')} `
        + 'but its TypeScript type names no declared interface');
      return;
    }
    const declared = fieldsOf(tsNames, types);
    const required = new Set(schema.required ?? []);
    const owner = tsNames.join(' | ');
    for (const [name, propSchema] of Object.entries(schema.properties)) {
      fields += 1;
      // A repeated multipart part (`files[]`) is the array field of the same name without [].
      const field = declared.get(name) ?? (name.endsWith('[]') ? declared.get(name.slice(0, -2)) : undefined);
      const at = `${where}.${name}`;
      if (!field) {
        problems.push(`${at}: not declared in ${owner} (index.d.ts)${name.endsWith('[]') ? ` (as ${name.slice(0, -2)})` : ''}`);
        continue;
      }
      if (required.has(name) && field.optional) problems.push(`${at}: required by the document, optional in ${owner}`);
      // A request type may not demand what the API does not; an answer's type may promise a field
      // the document leaves optional (e.g. a face box's x, y, width, height, always sent together).
      if (mode === 'request' && !required.has(name) && !field.optional) {
        problems.push(`${at}: optional in the document, required in ${owner}`);
      }
      const flat = flatten(doc, propSchema);
      if (flat.nullable && !/\bnull\b/.test(field.type)) problems.push(`${at}: nullable in the document, ${owner} lacks | null`);
      const values = (flat.enum ?? []).filter((value) => typeof value === 'string');
      const literals = literalsOf(field.type, types);
      if (values.length && literals.size && !allowsAnyString(field.type, types)) {
        const missing = values.filter((value) => !literals.has(value));
        if (missing.length) problems.push(`${at}: enum value(s) ${missing.join(', ')} missing from ${field.type}`);
      }
      checkValue(propSchema, identifiers(field.type, types), at, mode);
    }
  }

  const byOperation = new Map(Object.entries(routes).map(([name, route]) => [`${route.method} ${route.path}`, name]));
  const documented = new Set();
  for (const [pathName, item] of Object.entries(doc.paths ?? {})) {
    for (const verb of METHODS) {
      const op = item[verb];
      if (!op) continue;
      const key = `${verb.toUpperCase()} ${pathName}`;
      documented.add(key);
      if (key in notInClient) continue;
      const security = op.security ?? doc.security ?? [];
      if (security.length && security.every((req) => Object.keys(req).every((s) => operatorSecurity.includes(s)))) continue;
      operations += 1;
      const name = byOperation.get(key);
      if (!name) {
        problems.push(`${key} (${op.operationId ?? op.summary ?? ''}): no client method (add it to src/routes.js, `
          + 'client.js and index.d.ts)');
        continue;
      }
      const route = routes[name];
      const signature = methods.get(name);
      if (!signature) problems.push(`${key}: ${className}.${name} is not declared in index.d.ts`);
      if (clientPrototype && typeof clientPrototype[name] !== 'function') {
        problems.push(`${key}: ${className}.${name} is not a method of client.js`);
      }
      // Request body.
      const content = op.requestBody?.content;
      if (content) {
        const schema = jsonSchemaOf(content) ?? Object.values(content)[0]?.schema;
        const formSchema = content['multipart/form-data']?.schema;
        if (!jsonSchemaOf(content) && formSchema && route.contentType !== 'multipart/form-data') {
          problems.push(`${key}: the document takes multipart/form-data; routes.${name}.contentType says otherwise`);
        }
        if (!route.request) problems.push(`${key}: routes.${name} names no request type`);
        else if (!types.has(route.request)) problems.push(`${key}: request type ${route.request} is not declared`);
        else if (schema) checkValue(schema, [route.request], `${name} request (${route.request})`, 'request');
        // JSON and a multipart form (the photo sent itself): the form has a type of its own.
        if (jsonSchemaOf(content) && formSchema) {
          if (!route.form) problems.push(`${key}: the document also takes multipart/form-data; routes.${name} names no form type`);
          else if (!types.has(route.form)) problems.push(`${key}: form type ${route.form} is not declared`);
          else checkValue(formSchema, [route.form], `${name} form (${route.form})`, 'request');
        } else if (route.form) {
          problems.push(`${key}: routes.${name}.form names ${route.form} but the document takes no multipart form besides JSON`);
        }
      }
      // Query parameters.
      const query = (op.parameters ?? []).map((p) => resolveRef(doc, p)).filter((p) => p.in === 'query');
      if (query.length) {
        if (!route.query || !types.has(route.query)) {
          problems.push(`${key}: query parameters ${query.map((p) => p.name).join(', ')} but routes.${name} names no declared query type`);
        } else {
          checkObject({ properties: Object.fromEntries(query.map((p) => [p.name, p.schema ?? {}])),
            required: query.filter((p) => p.required).map((p) => p.name) }, [route.query], `${name} query (${route.query})`, 'request');
        }
      }
      // Each 2xx JSON answer (a route with `wait` has two: 200 finished, 202 queued), against
      // routes[name].responses[status], else routes[name].response.
      const answers = Object.entries(op.responses ?? {}).filter(([status]) => /^2/.test(status)).sort()
        .map(([status, response]) => [status, jsonSchemaOf(resolveRef(doc, response).content)])
        .filter(([, schema]) => schema);
      for (const [status, answer] of answers) {
        const typeName = route.responses?.[status] ?? route.response;
        const label = answers.length > 1 ? `${name} answer ${status}` : `${name} answer`;
        if (!typeName) problems.push(`${key}: answers JSON (${status}) but routes.${name} names no response type`);
        else if (!types.has(typeName)) problems.push(`${key}: response type ${typeName} is not declared`);
        else {
          checkValue(answer, [typeName], `${label} (${typeName})`, 'response');
          if (signature && !new RegExp(`\\b${typeName}\\b`).test(signature.slice(signature.lastIndexOf(')')))) {
            problems.push(`${key}: ${className}.${name} does not return ${typeName}`);
          }
        }
      }
      for (const status of Object.keys(route.responses ?? {})) {
        if (!answers.some(([documentedStatus]) => documentedStatus === String(status))) {
          problems.push(`routes.${name}.responses: ${key} has no ${status} JSON answer in the document`);
        }
      }
    }
  }
  for (const [name, route] of Object.entries(routes)) {
    const key = `${route.method} ${route.path}`;
    if (!documented.has(key)) problems.push(`routes.${name}: ${key} is not an operation of the document`);
  }
  for (const key of Object.keys(notInClient)) {
    if (!documented.has(key)) problems.push(`NOT_IN_CLIENT: ${key} is not an operation of the document`);
  }
  return { problems, operations, fields };
}

/** Loads a document from a file or a URL. */
export async function loadDocument(source) {
  if (/^https?:\/\//.test(source)) {
    const response = await fetch(source);
    if (!response.ok) throw new Error(`GET ${source}: HTTP ${response.status}`);
    return response.json();
  }
  return JSON.parse(await readFile(source, 'utf8'));
}

/** The check with this package's own routes, declarations and client. */
export async function checkPackage(doc, dtsPath = DEFAULT_DTS) {
  const { ROUTES, NOT_IN_CLIENT, OPERATOR_SECURITY } = await import('../src/routes.js');
  const { ImageQueueClient } = await import('../src/client.js');
  return checkDocument(doc, {
    dtsText: await readFile(dtsPath, 'utf8'), routes: ROUTES, notInClient: NOT_IN_CLIENT,
    operatorSecurity: OPERATOR_SECURITY, clientPrototype: ImageQueueClient.prototype,
  });
}

async function main(argv) {
  const args = [...argv];
  let dts = DEFAULT_DTS;
  const at = args.indexOf('--dts');
  if (at >= 0) {
    dts = args[at + 1];
    args.splice(at, 2);
  }
  if (args.length !== 1) {
    console.error('usage: check-openapi.mjs <openapi.json | URL> [--dts index.d.ts]');
    return 2;
  }
  const result = await checkPackage(await loadDocument(args[0]), dts);
  for (const problem of result.problems) console.error(`problem: ${problem}`);
  if (result.problems.length) {
    console.error(`${result.problems.length} problem(s): the client does not match the OpenAPI document`);
    return 1;
  }
  console.log(`ok: ${result.operations} operations and ${result.fields} fields of the document are in the client`);
  return 0;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = await main(process.argv.slice(2));
}
