// A local HTTP server for the unit tests: each test scripts the answers (no network).
import http from 'node:http';

/**
 * Starts a server on a free loopback port; `handler(req, body, res)` answers.
 * Resolves with {url, requests, close}; `requests` records method, url, headers and body text.
 */
export async function startServer(handler) {
  const requests = [];
  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const body = Buffer.concat(chunks);
    const seen = { method: req.method, url: req.url, headers: req.headers, body, at: Date.now() };
    requests.push(seen);
    try {
      await handler(req, body, res, seen);
    } catch (error) {
      res.writeHead(599).end(String(error));
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () => new Promise((resolve) => { server.closeAllConnections?.(); server.close(resolve); }),
  };
}

/** Writes a JSON answer. */
export function json(res, status, body, headers = {}) {
  res.writeHead(status, { 'Content-Type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
}

/** The API's error body. */
export function apiError(res, status, code, message, details, headers = {}) {
  json(res, status, { success: false, error: { code, message, details } }, headers);
}
