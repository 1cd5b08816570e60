export interface Route {
  method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  /** OpenAPI form: /api/image-queue/job/{jobId} */
  path: string;
  /** TypeScript type (index.d.ts) of the request body */
  request?: string;
  /** TypeScript type (index.d.ts) of the multipart form taken besides JSON (a photo sent itself) */
  form?: string;
  /** TypeScript type (index.d.ts) of the 2xx JSON answer */
  response?: string;
  /** by status, when the route has more than one 2xx JSON answer */
  responses?: { [status: string]: string };
  /** TypeScript type (index.d.ts) of the query parameters */
  query?: string;
  /** body content type when not JSON */
  contentType?: string;
  /** no API key is sent */
  public?: boolean;
}

export declare const ROUTES: Readonly<Record<string, Route>>;
export declare const NOT_IN_CLIENT: Readonly<Record<string, string>>;
export declare const OPERATOR_SECURITY: readonly string[];
