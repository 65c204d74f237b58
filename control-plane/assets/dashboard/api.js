// The dashboard's one helper for the REST API: JSON calls with the session's CSRF token on
// writes, followed text (logs, build output) and the event stream (Server-Sent Events
// read over fetch, so that every event kind arrives and the cookie goes along).

let csrfToken = null;

/** Sets the CSRF token every write of this session carries. */
export function setCsrf(token) {
  csrfToken = token;
}

/** An error answer: `problem` is the API's problem document. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

/** `METHOD path` with an optional JSON body; resolves to the parsed answer (null for 204). */
export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && csrfToken) headers["X-CSRF-Token"] = csrfToken;
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { detail: text };
  }
  if (!response.ok) {
    if (response.status === 401) window.dispatchEvent(new CustomEvent("diplo:unauthenticated"));
    throw new ApiError(response.status, data || {});
  }
  return data;
}

/** Reads a followed text answer, calling `onText` with each piece; stops when `signal` aborts. */
export async function follow(path, onText, signal) {
  const response = await fetch(path, { credentials: "same-origin", signal });
  if (!response.ok) {
    const text = await response.text();
    let detail = text;
    try {
      detail = JSON.parse(text).detail || text;
    } catch {
      // not a problem document: the text itself
    }
    throw new ApiError(response.status, { detail });
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    onText(decoder.decode(value, { stream: true }));
  }
}

/**
 * Follows the event stream from sequence `after` (null: from now on), calling
 * `onEvent({kind, sequence, subject, message, actor, at})` for each event; reconnects after
 * a failure from the last sequence seen. Returns a function that stops it.
 */
export function subscribeEvents(onEvent, after = null) {
  const controller = new AbortController();
  let last = after;
  const run = async () => {
    while (!controller.signal.aborted) {
      try {
        let buffer = "";
        const query = last === null ? "" : `?after=${last}`;
        await follow(`/api/v1/events${query}`, (text) => {
          buffer += text;
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            const event = parseEvent(block);
            if (event === null) continue;
            if (event.sequence !== undefined) last = event.sequence;
            onEvent(event);
          }
        }, controller.signal);
      } catch (error) {
        if (controller.signal.aborted) return;
        if (error instanceof ApiError && error.status === 401) return;
      }
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  };
  run();
  return () => controller.abort();
}

/** One Server-Sent Events block as an event object, or null for a comment or keep-alive. */
export function parseEvent(block) {
  let kind = "message";
  let data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) kind = line.slice(6).trim();
    else if (line.startsWith("data:")) data += line.slice(5).trimStart();
  }
  if (!data) return null;
  try {
    return { kind, ...JSON.parse(data) };
  } catch {
    return null;
  }
}
