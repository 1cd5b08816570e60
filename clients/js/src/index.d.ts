// Types of @image-queue/client. Request and answer types restate the service's OpenAPI document
// (/api/openapi.json); the repository's test (scripts/check-openapi.mjs) fails when a field,
// an enum value, a nullability or an operation of the document is missing here.
// Conventions the check relies on: one `export interface` or `export type` per type, nested
// objects as named types, optional (`?`) only where the document does not require a field (and
// in requests, wherever it does not), `| null` where it is nullable.

// --- scalars ----------------------------------------------------------------------------------

/** 1-128 letters, digits and . _ : @ - starting with a letter or digit (an integer is read as its digits). */
export type Id = string | number;
/** An ISO 8601 UTC timestamp. */
export type Timestamp = string;
export type CropMode = 'square' | 'passport' | 'idcard';
export type CropFormat = 'jpeg' | 'png' | 'webp' | 'jpg';
export type NoFacePolicy = 'fail' | 'center';
export type BackgroundFormat = 'png' | 'webp';
/** yunet: a CNN with landmarks (passport and idcard heads levelled and framed from them); haar: cascades */
export type FaceDetector = 'yunet' | 'haar';
export type JobState = 'waiting' | 'active' | 'completed' | 'failed' | 'delayed' | 'canceled';
export type RecordStatus = 'queued' | 'processing' | 'completed' | 'failed' | 'canceled';
export type BatchState = 'queued' | 'ingesting' | 'processing' | 'completed' | 'completed_with_errors' | 'failed'
  | 'canceled';
/** what each image of a batch gets: a face crop (by `mode`), a background removal or an ID photo */
export type BatchOperation = 'cropFace' | 'removeBg' | 'idPhoto';
export type HealthState = 'healthy' | 'degraded' | 'unhealthy';
export type UpDown = 'up' | 'down';

// --- options ----------------------------------------------------------------------------------

/** Face-crop options; every one is optional. */
export interface CropOptions {
  /** 0-2: fraction of the face size added on each side */
  padding?: number | null;
  /** 16-4096; one alone keeps the mode's aspect */
  outputWidth?: number | null;
  outputHeight?: number | null;
  format?: CropFormat;
  /** 1-100 (default 92) */
  quality?: number | null;
  /** `center`: store a centred crop when no face is found (square mode only) */
  noFace?: NoFacePolicy;
  /** default: the service's FACE_DETECTOR */
  detector?: FaceDetector | null;
}

/** Background-removal options; every one is optional. */
export interface RemoveBgOptions {
  /** a rembg model the servers hold (REMBG_MODELS); default: the first */
  model?: string | null;
  /** flatten onto this colour (JPEG output): "#rrggbb", "#rgb" or [r, g, b] */
  bgColor?: string | [number, number, number] | null;
  /** store the greyscale mask instead of the cut-out */
  onlyMask?: boolean | null;
  /** finer edges (hair), several times slower */
  alphaMatting?: boolean | null;
  format?: BackgroundFormat | null;
  /** shrink the output so its longer side is at most this (16-4096) */
  maxSide?: number | null;
  /** JPEG quality with bgColor, or lossy WebP quality (1-100) */
  quality?: number | null;
}

// --- requests ---------------------------------------------------------------------------------

export interface CropFaceRequest {
  recordId: Id;
  projectId: Id;
  /** http(s) URL of the photo */
  photoUrl: string;
  mode: CropMode;
  /** optional; when given it must be the API key's vendor (403 otherwise) */
  vendorId?: string | null;
  options?: CropOptions | null;
  /** completion webhook (signed POST when the job finishes); empty means none */
  callbackUrl?: string | null;
  /** 0-30 s: wait for the job; the answer is then the finished job (JobFinished) when it ends in time */
  wait?: number | null;
}

export interface BulkCropFaceRequest {
  recordIds: Id[];
  /** as many as recordIds, in the same order */
  photoUrls: string[];
  projectId: Id;
  mode: CropMode;
  vendorId?: string | null;
  options?: CropOptions | null;
  callbackUrl?: string | null;
  /** 0-30 s: wait for the jobs; the answer is then every finished job (BulkFinished) when all end in time */
  wait?: number | null;
}

export interface RemoveBgRequest {
  recordId: Id;
  projectId: Id;
  photoUrl: string;
  vendorId?: string | null;
  options?: RemoveBgOptions | null;
  callbackUrl?: string | null;
  /** 0-30 s: wait for the job; the answer is then the finished job (JobFinished) when it ends in time */
  wait?: number | null;
}

/** The photo itself (JPEG, PNG, WebP, HEIC/HEIF, AVIF), sent as a multipart form instead of photoUrl. */
export type PhotoFile = Blob | ArrayBuffer | ArrayBufferView;

/** cropFace with the photo sent itself (the client builds the multipart form). */
export interface CropFaceUpload {
  file: PhotoFile;
  /** the file name sent (default: the File's name, else photo) */
  filename?: string;
  recordId: Id;
  projectId: Id;
  mode: CropMode;
  /** sent as JSON text */
  options?: CropOptions | string;
  vendorId?: string | null;
  callbackUrl?: string | null;
  wait?: number;
}

/** removeBackground with the photo sent itself (the client builds the multipart form). */
export interface RemoveBgUpload {
  file: PhotoFile;
  filename?: string;
  recordId: Id;
  projectId: Id;
  /** sent as JSON text */
  options?: RemoveBgOptions | string;
  vendorId?: string | null;
  callbackUrl?: string | null;
  wait?: number;
}

export interface BulkRemoveBgRequest {
  recordIds: Id[];
  photoUrls: string[];
  projectId: Id;
  vendorId?: string | null;
  options?: RemoveBgOptions | null;
  callbackUrl?: string | null;
  /** 0-30 s: wait for the jobs; the answer is then every finished job (BulkFinished) when all end in time */
  wait?: number | null;
}

/** A built-in ID-photo spec: icao (35x45 mm), us (2x2 in), schengen (35x45 mm), idcard (3:4). */
export type IdPhotoSpecName = 'icao' | 'us' | 'schengen' | 'idcard';

/** A custom ID-photo spec, in millimetres (eye line measured up from the bottom edge). */
export interface CustomIdPhotoSpec {
  widthMm: number;
  heightMm: number;
  /** 150-1200 */
  dpi: number;
  headMinMm: number;
  headMaxMm: number;
  eyeMinMm: number;
  eyeMaxMm: number;
}

export type IdPhotoSpec = IdPhotoSpecName | CustomIdPhotoSpec;

/** ID-photo options; every one is optional. */
export interface IdPhotoOptions {
  /** white (default) or a light neutral grey: 'white', 'lightgrey', '#rrggbb' or [r, g, b] */
  background?: string | number[];
  /** 150-1200 (default 300) */
  dpi?: number;
  format?: 'jpeg' | 'png';
  /** JPEG only: the highest quality that fits is searched (10 000 - 20 000 000) */
  maxBytes?: number;
}

/** A batch's ID-photo options: IdPhotoOptions plus the spec (required). */
export interface IdPhotoBatchOptions extends IdPhotoOptions {
  spec: IdPhotoSpec;
}

export interface IdPhotoRequest {
  recordId: Id;
  projectId: Id;
  photoUrl: string;
  spec: IdPhotoSpec;
  vendorId?: string | null;
  options?: IdPhotoOptions | null;
  callbackUrl?: string | null;
  /** 0-30 s: wait for the job; the answer is then the finished job (JobFinished) when it ends in time */
  wait?: number | null;
}

/** idPhoto with the photo sent itself (the client builds the multipart form; a custom spec goes as JSON text). */
export interface IdPhotoUpload {
  file: PhotoFile;
  filename?: string;
  recordId: Id;
  projectId: Id;
  spec: IdPhotoSpec | string;
  options?: IdPhotoOptions | string;
  vendorId?: string | null;
  callbackUrl?: string | null;
  wait?: number | null;
}

export interface BulkIdPhotoRequest {
  recordIds: Id[];
  /** as many as recordIds, in the same order */
  photoUrls: string[];
  projectId: Id;
  spec: IdPhotoSpec;
  vendorId?: string | null;
  options?: IdPhotoOptions | null;
  callbackUrl?: string | null;
  /** 0-30 s: wait for the jobs; the answer is then every finished job (BulkFinished) when all end in time */
  wait?: number | null;
}

/**
 * A bulk call with the photos sent themselves (the client builds the multipart form: one
 * `files[]` part per photo, in the order of recordIds; recordIds and options as JSON text).
 */
export interface BulkUpload {
  /** as many as recordIds, in the same order (sent as the form's `files[]` parts) */
  files: PhotoFile[];
  /** the file names sent (default: each File's name, else photo-1, photo-2, ...) */
  filenames?: string[];
  /** sent as JSON text */
  recordIds: Id[];
  projectId: Id;
  vendorId?: string | null;
  callbackUrl?: string | null;
  /** 0-30 s, as in the JSON request */
  wait?: number | null;
}

/** bulkCropFace with the photos sent themselves. */
export interface BulkCropFaceUpload extends BulkUpload {
  mode: CropMode;
  /** sent as JSON text */
  options?: CropOptions | string;
}

/** bulkRemoveBackground with the photos sent themselves. */
export interface BulkRemoveBgUpload extends BulkUpload {
  /** sent as JSON text */
  options?: RemoveBgOptions | string;
}

/** bulkIdPhoto with the photos sent themselves (a custom spec goes as JSON text). */
export interface BulkIdPhotoUpload extends BulkUpload {
  spec: IdPhotoSpec | string;
  options?: IdPhotoOptions | string;
}

/** One measurement of an ID photo's compliance report. */
export interface IdPhotoCheck {
  name: 'headHeight' | 'eyeLine' | 'roll' | 'yaw' | 'oneFace' | 'faceLargeEnough' | 'sharpness' | 'highlights'
    | 'shadows' | 'background';
  /** null: could not be measured (the check fails) */
  measured: number | null;
  unit?: string;
  limit: string;
  pass: boolean;
  percent?: number | null;
}

export interface IdPhotoReport {
  /** every check measured and passed */
  compliant: boolean;
  spec: { [key: string]: unknown };
  crownSource?: 'mask' | 'landmarks';
  checks: IdPhotoCheck[];
}

export interface BatchImage {
  recordId: Id;
  imageUrl: string;
}

export interface AddImagesRequest {
  projectId: Id;
  /** 1-10, 10 most urgent (default 5) */
  priority?: number | null;
  /** default cropFace */
  operation?: BatchOperation | null;
  mode?: CropMode | null;
  /** the operation's options */
  options?: CropOptions | RemoveBgOptions | IdPhotoBatchOptions | null;
  vendorId?: string | null;
  callbackUrl?: string | null;
  images: BatchImage[];
}

/** The multipart form of uploadZip (the client builds the FormData). */
export interface UploadZipRequest {
  /** the ZIP archive */
  file: Blob | ArrayBuffer | ArrayBufferView;
  /** the file name sent (default: the File's name, else upload.zip) */
  filename?: string;
  projectId: Id;
  priority?: number;
  /** default cropFace */
  operation?: BatchOperation;
  mode?: CropMode;
  /** the operation's options (sent as JSON text) */
  options?: CropOptions | RemoveBgOptions | IdPhotoBatchOptions | string;
  vendorId?: string | null;
  callbackUrl?: string | null;
}

export interface BatchResultsQuery {
  format?: 'jsonl' | 'csv';
}

/** A page of a list: newest first; pass the answer's nextCursor as `cursor` for the next one. */
export interface PageQuery {
  projectId?: Id;
  /** page size, 1-200 (default 50) */
  limit?: number;
  cursor?: string;
}

export interface RecordsQuery extends PageQuery {
  status?: RecordStatus;
}

export interface BatchesQuery extends PageQuery {
  status?: BatchState;
}

export interface UsageQuery {
  /** only this project's counts (rate limits are per vendor) */
  projectId?: Id;
}

// --- answers ----------------------------------------------------------------------------------

export interface JobQueued {
  success: true;
  jobId: string;
  recordId: string;
  message: string;
  estimatedTime: string;
  estimatedSeconds: number;
  /** the job's status URL */
  statusUrl: string;
}

export interface BulkQueued {
  success: true;
  jobIds: string[];
  recordIds: string[];
  count: number;
  message: string;
  estimatedTime: string;
  estimatedSeconds?: number;
}

export interface JobError {
  code: string;
  message: string;
  /** no retry will fix it */
  permanent?: boolean;
  /** no retry is left */
  final?: boolean;
}

export interface FaceBox {
  x: number;
  y: number;
  width: number;
  height: number;
}

export interface Point {
  x: number;
  y: number;
}

/** A face's five landmarks; the subject's right eye is on the viewer's left. */
export interface FaceLandmarks {
  rightEye: Point;
  leftEye: Point;
  noseTip: Point;
  rightMouth: Point;
  leftMouth: Point;
}

/** One face a crop found, in photo pixels (after EXIF rotation). */
export interface FoundFace {
  box: FaceBox;
  score: number | null;
  /** null: the detector has none (haar) */
  landmarks: FaceLandmarks | null;
}

/** A completed job's result: face-crop fields or background-removal fields. */
export interface JobResult {
  success?: boolean;
  recordId?: string;
  /** the stored output */
  photoUrl: string;
  width?: number | null;
  height?: number | null;
  // face crop
  mode?: CropMode;
  faceDetected?: boolean;
  faceCount?: number | null;
  faceBox?: FaceBox | null;
  faces?: FoundFace[];
  rollDegrees?: number | null;
  detector?: string;
  /** the photo's size after EXIF rotation: the pixel space of faceBox and faces */
  sourceWidth?: number | null;
  sourceHeight?: number | null;
  // background removal
  format?: 'png' | 'jpeg' | 'webp';
  options?: RemoveBgOptions;
  // ID photo
  dpi?: number;
  compliant?: boolean;
  report?: IdPhotoReport;
  /** a preview of the output, long side at most THUMBNAIL_MAX_PX (cut-outs keep alpha); null when off */
  thumbnailUrl?: string | null;
  /** a preview of the source photo; null when off */
  sourceThumbnailUrl?: string | null;
  [key: string]: unknown;
}

/** The job's payload, as queued. */
export interface JobData {
  recordId?: string;
  projectId?: string;
  vendorId?: string;
  photoUrl?: string;
  mode?: CropMode;
  options?: CropOptions | RemoveBgOptions | IdPhotoOptions | null;
  callbackUrl?: string | null;
  [key: string]: unknown;
}

/** A completion webhook's delivery state (jobs and batches queued with a callbackUrl). */
export interface WebhookState {
  url: string;
  state: 'pending' | 'delivered' | 'failed';
  event: string | null;
  eventId: string | null;
  attempts: number;
  maxAttempts: number;
  lastStatusCode: number | null;
  lastError: string | null;
  lastAttemptAt: Timestamp | null;
  nextAttemptAt: Timestamp | null;
  deliveredAt: Timestamp | null;
}

export interface JobStatus {
  success: true;
  id: string;
  state: JobState;
  /** 0-100 */
  progress: number;
  data: JobData;
  /** when completed */
  result?: JobResult | null;
  /** when failed, or the last error of a pending retry */
  error?: JobError;
  attempts: number;
  maxAttempts: number;
  createdAt?: Timestamp | null;
  startedAt?: Timestamp | null;
  finishedAt?: Timestamp | null;
  webhook?: WebhookState;
}

export interface JobCanceled {
  success: true;
  id: string;
  state: 'canceled';
  previousState: 'waiting' | 'delayed' | 'active' | 'canceled';
  message?: string;
}

/** A submission with `wait` whose job ended in time (200): the job, as job(), plus jobId and recordId. */
export interface JobFinished extends JobStatus {
  jobId: string;
  recordId: string;
}

/** A bulk submission with `wait` whose jobs all ended in time (200): each job as job(), plus jobId and recordId. */
export interface BulkFinished {
  success: true;
  count: number;
  jobs: JobFinished[];
}

/** A job that finished well: what pollJobUntilComplete answers. */
export type CompletedJob = JobStatus & { state: 'completed'; result: JobResult };

export interface RecordRow {
  recordId: string;
  projectId: string;
  status: RecordStatus;
  jobKind?: string | null;
  jobId?: string | null;
  sourceUrl?: string | null;
  outputUrl?: string | null;
  faceDetected?: boolean | null;
  faceCount?: number | null;
  faceBox?: FaceBox | null;
  width?: number | null;
  height?: number | null;
  /** every face found, largest first (face crops) */
  faces?: FoundFace[] | null;
  rollDegrees?: number | null;
  /** the photo's size after EXIF rotation: the pixel space of faceBox and faces */
  sourceWidth?: number | null;
  sourceHeight?: number | null;
  thumbnailUrl?: string | null;
  sourceThumbnailUrl?: string | null;
  errorCode?: string | null;
  errorMessage?: string | null;
  attempts?: number;
  createdAt?: Timestamp | null;
  updatedAt?: Timestamp | null;
  completedAt?: Timestamp | null;
}

export interface RecordAnswer {
  success: true;
  record: RecordRow;
}

export interface RecordsPage {
  success: true;
  records: RecordRow[];
  /** null on the last page */
  nextCursor: string | null;
  limit: number;
}

export interface QueueCounts {
  waiting: number;
  active: number;
  completed: number;
  failed: number;
  delayed: number;
}

export interface QueueStats {
  success: true;
  backgroundRemoval: QueueCounts;
  faceCrop: QueueCounts;
  imageProcessing: QueueCounts;
}

/** Single jobs of one operation, by record status. */
export interface SingleJobUsage {
  queued: number;
  processing: number;
  completed: number;
  failed: number;
  canceled: number;
  total: number;
}

/** Batches of one operation and their images (pending: not yet finished). */
export interface BatchUsage {
  batches: number;
  images: number;
  processed: number;
  failed: number;
  skipped: number;
  canceled: number;
  pending: number;
}

export interface OperationUsage {
  single: SingleJobUsage;
  batch: BatchUsage;
}

export interface UsageOperations {
  cropFace: OperationUsage;
  removeBg: OperationUsage;
  idPhoto: OperationUsage;
}

export type RateLimitCategory = 'image-processing' | 'background-removal' | 'bulk' | 'reads';

/** One window of a rate limit, as it stands now. */
export interface RateLimitWindow {
  limit: number;
  /** e.g. "15 minutes" */
  per: string;
  remaining: number;
  resetsInSeconds: number;
}

export interface RateLimitUsage {
  category: RateLimitCategory;
  /** e.g. "100/15 minutes" */
  limit: string;
  /** override: set by an operator for this vendor */
  source: 'default' | 'override';
  windows: RateLimitWindow[];
}

/** GET /api/usage: counts per operation (of one project with projectId) and the rate limits left now. */
export interface Usage {
  success: true;
  vendorId: string;
  /** the projectId asked for, else null (every project) */
  projectId: string | null;
  operations: UsageOperations;
  /** false: RATE_LIMIT_ENABLED is off on the service, nothing is limited and rateLimits is empty */
  rateLimitsEnabled: boolean;
  rateLimits: RateLimitUsage[];
}

export interface BatchQueued {
  success: true;
  batchId: string;
  status: BatchState;
  operation?: BatchOperation;
  /** null until a ZIP's entries are counted */
  imageCount: number | null;
  queued: number;
  message?: string;
  statusUrl: string;
}

export interface BatchProgress {
  processed: number;
  total: number;
  failed: number;
  updatedAt?: Timestamp | null;
}

export interface BatchError {
  code: string;
  message?: string | null;
}

export interface Batch {
  batchId: string;
  projectId: string;
  status: BatchState;
  operation?: BatchOperation;
  priority?: number;
  mode?: string;
  imageCount: number;
  queued?: number;
  skipped?: number;
  /** images canceled before they ran */
  canceled?: number;
  progress: BatchProgress;
  progressPercent: number;
  createdAt?: Timestamp | null;
  completedAt?: Timestamp | null;
  resultsUrl?: string;
  resultsZipUrl?: string;
  error?: BatchError;
  webhook?: WebhookState;
}

export interface BatchStatusAnswer {
  success: true;
  batch: Batch;
}

export interface BatchesPage {
  success: true;
  batches: Batch[];
  /** null on the last page */
  nextCursor: string | null;
  limit: number;
}

export interface BatchCanceled {
  success: true;
  batch: Batch;
  /** pending images canceled by this call */
  canceledNow: number;
  message?: string;
}

/** One row of a batch's results (JSON lines or CSV). */
export interface BatchResultRow {
  seq: number;
  recordId: string;
  /** the path in the ZIP (null for URL lists) */
  entry: string | null;
  status: string;
  outputUrl: string | null;
  faceDetected: boolean | number | null;
  faceCount: number | null;
  faceBox: FaceBox | null;
  width: number | null;
  height: number | null;
  errorCode: string | null;
  errorMessage: string | null;
  attempts: number | null;
  /** a preview of the output (cut-outs keep alpha); null when off or not completed */
  thumbnailUrl: string | null;
  /** a preview of the source image, kept after a ZIP's source is deleted */
  sourceThumbnailUrl: string | null;
  /** every face found (face crops; JSON text in CSV) */
  faces: FoundFace[] | null;
  rollDegrees: number | null;
  /** the photo's size after EXIF rotation: the pixel space of faceBox and faces */
  sourceWidth: number | null;
  sourceHeight: number | null;
}

export interface BatchQueueStatsBody {
  faceDetection: QueueCounts;
  /** per priority, "1" to "10" */
  faceDetectionByPriority?: { [priority: string]: QueueCounts };
  batchIngestion: QueueCounts;
  /** Unix ms */
  timestamp: number;
}

export interface BatchQueueStats {
  success: true;
  stats: BatchQueueStatsBody;
}

export interface HealthCheck {
  status: UpDown;
  latencyMs?: number;
  error?: string;
}

export interface RembgInstance {
  url: string;
  status: UpDown;
  latencyMs?: number;
  error?: string;
  /** the workers' view: closed, open, half-open */
  breaker?: string;
}

/** The face detector's model file as the API host sees it. */
export interface FaceModel {
  status: 'ok' | 'missing' | 'bad md5';
  file: string;
  detector: string;
  /** whether the configured detector needs it */
  required: boolean;
  message?: string;
}

export interface Health {
  success: boolean;
  status: HealthState;
  redis: HealthCheck;
  db: HealthCheck;
  /** live `rq worker`s per queue */
  workers: { [queue: string]: number };
  queueSizes: { [queue: string]: number };
  bgRemovalQueueSize?: number | null;
  faceCropQueueSize?: number | null;
  rembgInstances: RembgInstance[];
  faceModel?: FaceModel;
  timestamp: string;
}

export interface Livez {
  success: boolean;
  status: 'alive';
}

export interface OpenAPIDocument {
  openapi: string;
  info: { [key: string]: unknown };
  paths: { [path: string]: { [method: string]: unknown } };
  components?: { [key: string]: unknown };
  [key: string]: unknown;
}

/** The API's error body (the client throws it as ImageQueueError). */
export interface ErrorBody {
  code: string;
  message: string;
  details?: unknown;
}

export interface ErrorAnswer {
  success: false;
  error: ErrorBody;
}

// --- client -----------------------------------------------------------------------------------

export interface ClientOptions {
  /** the API's origin, e.g. https://images.example.com ('' = same origin; Node: IMAGEQUEUE_URL) */
  baseUrl?: string;
  /** a vendor's API key, sent as X-API-Key (Node: IMAGEQUEUE_API_KEY) */
  apiKey?: string;
  /** per HTTP request (default 30 000; uploads: none) */
  timeoutMs?: number;
  /** retries of one call (default 3) */
  retries?: number;
  /** first backoff (default 500 ms), doubled per retry, with jitter */
  backoffMs?: number;
  /** backoff cap (default 10 000 ms) */
  maxBackoffMs?: number;
  /** a Retry-After longer than this is not waited for: the error is thrown (default 60 000 ms) */
  maxRetryWaitMs?: number;
  /** extra headers on every request */
  headers?: { [name: string]: string };
  /** a fetch to use instead of the global one */
  fetch?: typeof fetch;
  /** a random source in [0, 1) for the jitter (tests) */
  random?: () => number;
}

export interface CallOptions {
  signal?: AbortSignal;
  /** overrides the client's timeoutMs for this call */
  timeoutMs?: number;
  /** overrides the client's retries for this call */
  retries?: number;
}

export interface SubmitOptions extends CallOptions {
  /** default: a fresh UUID per call, the same on every retry of it */
  idempotencyKey?: string;
}

export interface PollOptions {
  signal?: AbortSignal;
  /** give up after this long (waitForJob: 10 min, waitForBatch: 1 h) */
  timeoutMs?: number;
  /** first interval between polls (jobs 500 ms, batches 1 s), x1.5 per poll */
  intervalMs?: number;
  /** interval cap (jobs 5 s, batches 10 s) */
  maxIntervalMs?: number;
  /** called with every status read */
  onUpdate?: (status: any) => void;
}

export declare const VERSION: string;
export declare const FINAL_JOB_STATES: readonly JobState[];
export declare const FINAL_BATCH_STATUSES: readonly BatchState[];
export declare function newIdempotencyKey(): Promise<string>;

export declare class ImageQueueClient {
  constructor(options?: ClientOptions);
  readonly baseUrl: string;
  apiKey: string | null;

  /** JSON with photoUrl, or multipart with `file`; with `wait`, the finished job (200) when it ends in time */
  cropFace(body: CropFaceRequest | CropFaceUpload, options?: SubmitOptions): Promise<JobQueued | JobFinished>;
  /** JSON with photoUrls, or multipart with `files`; with `wait`, every finished job (200) when all end in time */
  bulkCropFace(body: BulkCropFaceRequest | BulkCropFaceUpload, options?: SubmitOptions): Promise<BulkQueued | BulkFinished>;
  removeBackground(body: RemoveBgRequest | RemoveBgUpload, options?: SubmitOptions): Promise<JobQueued | JobFinished>;
  bulkRemoveBackground(body: BulkRemoveBgRequest | BulkRemoveBgUpload, options?: SubmitOptions): Promise<BulkQueued | BulkFinished>;
  /** JSON with photoUrl, or multipart with `file`; with `wait`, the finished job (200) when it ends in time */
  idPhoto(body: IdPhotoRequest | IdPhotoUpload, options?: SubmitOptions): Promise<JobQueued | JobFinished>;
  bulkIdPhoto(body: BulkIdPhotoRequest | BulkIdPhotoUpload, options?: SubmitOptions): Promise<BulkQueued | BulkFinished>;
  job(jobId: string, options?: CallOptions): Promise<JobStatus>;
  cancelJob(jobId: string, options?: CallOptions): Promise<JobCanceled>;
  record(recordId: Id, options?: CallOptions): Promise<RecordAnswer>;
  listRecords(query?: RecordsQuery, options?: CallOptions): Promise<RecordsPage>;
  queueStats(options?: CallOptions): Promise<QueueStats>;
  /** counts per operation and the rate limits left now */
  usage(query?: UsageQuery, options?: CallOptions): Promise<Usage>;

  uploadZip(request: UploadZipRequest, options?: SubmitOptions): Promise<BatchQueued>;
  addImages(body: AddImagesRequest, options?: SubmitOptions): Promise<BatchQueued>;
  batchStatus(batchId: string, options?: CallOptions): Promise<BatchStatusAnswer>;
  listBatches(query?: BatchesQuery, options?: CallOptions): Promise<BatchesPage>;
  cancelBatch(batchId: string, options?: SubmitOptions): Promise<BatchCanceled>;
  /** every finished output and the results listing, as one ZIP */
  batchResultsZip(batchId: string, options?: CallOptions): Promise<Blob>;
  batchResultsZipStream(batchId: string, options?: CallOptions): Promise<ReadableStream<Uint8Array>>;
  /** format=jsonl, parsed as it streams (BatchResultsQuery) */
  batchResults(batchId: string, options?: CallOptions): AsyncGenerator<BatchResultRow, void, undefined>;
  /** format=csv */
  batchResultsCsv(batchId: string, options?: CallOptions): Promise<string>;
  batchQueueStats(options?: CallOptions): Promise<BatchQueueStats>;

  /** answers the body for 503 (unhealthy) too */
  health(options?: CallOptions): Promise<Health>;
  livez(options?: CallOptions): Promise<Livez>;
  openapi(options?: CallOptions): Promise<OpenAPIDocument>;
  /** a result URL (photoUrl, outputUrl) or storage key; the API key is not sent */
  downloadResult(urlOrKey: string, options?: CallOptions): Promise<Blob>;

  waitForJob(jobId: string, options?: PollOptions): Promise<JobStatus>;
  waitForCompletedJob(jobId: string, options?: PollOptions): Promise<CompletedJob>;
  waitForBatch(batchId: string, options?: PollOptions): Promise<BatchStatusAnswer>;

  /** the wait before retry `attempt` (0-based), in ms */
  backoff(attempt: number): number;
  retryable(error: unknown): boolean;
  url(route: string, params?: { [name: string]: string | number }, query?: { [name: string]: string | undefined }): string;
  send(route: string, init?: { [key: string]: unknown }): Promise<Response>;
  call<T = unknown>(route: string, init?: { [key: string]: unknown }): Promise<T>;
}

/** Extra fields and call options of a queueAPI submission. */
export interface QueueCallOptions extends SubmitOptions {
  callbackUrl?: string;
  vendorId?: string;
  /** 0-30 s: the answer is the finished job (JobFinished, `state` set) when it ends in time; for a bulk
   *  call, every finished job (BulkFinished, `jobs` set) when all end in time */
  wait?: number;
}

/** The frontend module of the first design document. */
export interface QueueAPI {
  readonly client: ImageQueueClient;
  /** `photo`: a URL, or the photo itself (File, Blob, bytes: sent as multipart) */
  queueBackgroundRemoval(recordId: Id, projectId: Id, photo: string | PhotoFile, options?: RemoveBgOptions | null,
    call?: QueueCallOptions): Promise<JobQueued | JobFinished>;
  /** `photos`: URLs, or the photos themselves (sent as multipart files[], in the order of recordIds) */
  queueBulkBackgroundRemoval(recordIds: Id[], projectId: Id, photos: string[] | PhotoFile[], options?: RemoveBgOptions | null,
    call?: QueueCallOptions): Promise<BulkQueued | BulkFinished>;
  queueFaceCrop(recordId: Id, projectId: Id, photo: string | PhotoFile, mode?: CropMode, options?: CropOptions | null,
    call?: QueueCallOptions): Promise<JobQueued | JobFinished>;
  queueBulkFaceCrop(recordIds: Id[], projectId: Id, photos: string[] | PhotoFile[], mode?: CropMode, options?: CropOptions | null,
    call?: QueueCallOptions): Promise<BulkQueued | BulkFinished>;
  /** an ID photo by `spec` (default icao): a URL or the photo itself */
  queueIdPhoto(recordId: Id, projectId: Id, photo: string | PhotoFile, spec?: IdPhotoSpec, options?: IdPhotoOptions | null,
    call?: QueueCallOptions): Promise<JobQueued | JobFinished>;
  queueBulkIdPhoto(recordIds: Id[], projectId: Id, photos: string[] | PhotoFile[], spec?: IdPhotoSpec,
    options?: IdPhotoOptions | null, call?: QueueCallOptions): Promise<BulkQueued | BulkFinished>;
  /** resolves with the completed job; rejects with JobFailedError (failed or canceled) or WaitTimeoutError
   *  (default 5 min) */
  pollJobUntilComplete(jobId: string, timeoutMs?: number, options?: Omit<PollOptions, 'timeoutMs'>): Promise<CompletedJob>;
  getJobStatus(jobId: string, options?: CallOptions): Promise<JobStatus>;
  cancelJob(jobId: string, options?: CallOptions): Promise<JobCanceled>;
  getRecord(recordId: Id, options?: CallOptions): Promise<RecordRow>;
  getQueueStats(options?: CallOptions): Promise<QueueStats>;
  getWorkerHealth(options?: CallOptions): Promise<Health>;
  getBatchStatus(batchId: string, options?: CallOptions): Promise<Batch>;
  listBatches(query?: BatchesQuery, options?: CallOptions): Promise<BatchesPage>;
  cancelBatch(batchId: string, options?: SubmitOptions): Promise<BatchCanceled>;
  /** the batch's results ZIP as a Blob; in a browser, `filename` given, it is also saved (a download) */
  downloadResultsZip(batchId: string, options?: CallOptions & { filename?: string }): Promise<Blob>;
}

export declare function createQueueAPI(config?: ClientOptions | ImageQueueClient): QueueAPI;

// --- errors -----------------------------------------------------------------------------------

export declare class ImageQueueError extends Error {
  constructor(message: string, init?: { status?: number | null; code?: string; details?: unknown;
    retryAfter?: number | null; body?: unknown; cause?: unknown });
  /** HTTP status; null when no answer came (network, timeout) or a job failed */
  readonly status: number | null;
  /** the API's error code (VALIDATION_ERROR, RATE_LIMITED, JOB_NOT_FOUND, ...) or NETWORK_ERROR,
   *  REQUEST_TIMEOUT, NO_API_KEY, WAIT_TIMEOUT, a failed job's code */
  readonly code: string;
  /** the API's error.details (400: {field, reason}) */
  readonly details: unknown;
  /** seconds, from Retry-After */
  readonly retryAfter: number | null;
  /** the parsed error body (or a failed job's status) */
  readonly body: unknown;
  /** the field a 400 names (details.field) */
  readonly field: string | null;
}

export declare class JobFailedError extends ImageQueueError {
  constructor(job: JobStatus);
  readonly job: JobStatus;
}

export declare class WaitTimeoutError extends ImageQueueError {
  constructor(message: string, last: unknown, cause?: unknown);
  /** the last status read (null when none was) */
  readonly last: any;
}

export declare function errorFromResponse(response: Response): Promise<ImageQueueError>;
export declare function parseRetryAfter(value: string | null | undefined): number | null;

export { ROUTES } from './routes.js';
