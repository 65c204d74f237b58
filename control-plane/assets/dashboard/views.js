// The dashboard's views. Each takes its root element and context and returns
// `{ ready, onEvent, leave }`: `ready` settles once first drawn, `onEvent` gets every
// event of the stream (the view re-fetches what the event touches), `leave` stops what
// the view follows. Elements are built with `h` (text is never parsed as HTML).
import { api, follow, subscribeEvents } from "./api.js";

/** An element: `h("a", { href: "#/" }, "text", child)`. */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(element.dataset, value);
    else element.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

const RUNTIMES = ["docker", "podman", "containerd", "lxc"];

function bytes(n) {
  if (!n) return "0 B";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(n >= 10 || i === 0 ? 0 : 1)} ${units[i]}`;
}

/** "5 s ago" for a time. */
export function ago(when) {
  const seconds = Math.max(0, Math.round((Date.now() - new Date(when).getTime()) / 1000));
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  return `${Math.round(seconds / 3600)} h ago`;
}

function failure(root, error) {
  root.replaceChildren(h("p", { class: "error", role: "alert" }, error.message));
}

/** States a deployment or instance passes through on its way to another. */
const TRANSITIONAL = new Set(["pending", "starting", "deploying", "building", "deleting", "queued"]);

/**
 * Draws with `draw()` after an event; when `draw` answers true (something is still on its
 * way: a status is written just after the event that announced it), once or twice more a
 * moment later. Not polling: it stops with the event's consequences.
 */
function redrawer(draw, onError) {
  let timer = null;
  const run = async (followUps) => {
    try {
      const unsettled = await draw();
      if (unsettled && followUps > 0) timer = setTimeout(() => run(followUps - 1), 1500);
    } catch (error) {
      onError(error);
    }
  };
  return () => {
    clearTimeout(timer);
    timer = setTimeout(() => run(3), 300);
  };
}

/** A view that draws with `draw()` and draws again on events `matches` accepts. */
function liveView(root, draw, matches) {
  const redraw = redrawer(draw, (error) => failure(root, error));
  return {
    ready: draw().catch((error) => failure(root, error)),
    onEvent: (event) => {
      if (matches(event)) redraw();
    },
  };
}

async function nodeNames() {
  const nodes = await api("GET", "/api/v1/nodes?limit=1000");
  return new Map(nodes.map((node) => [node.id, node.name]));
}

// ---- cluster overview ----

function nodeBadges(node) {
  const badges = [];
  if (node.raspberry_pi_model) badges.push(h("span", { class: "badge pi", title: node.raspberry_pi_model }, "Pi"));
  if (node.virtualization && node.virtualization !== "none") {
    badges.push(h("span", { class: "badge vm", title: `virtualization: ${node.virtualization}` }, "VM"));
  }
  if (node.cordoned) badges.push(h("span", { class: "badge cordoned" }, "cordoned"));
  return badges;
}

function nodeCard(node, usage, context) {
  const runtimes = h(
    "ul",
    { class: "runtimes", "aria-label": "Runtimes" },
    node.runtimes.map((report) => {
      const preferred = report.runtime === node.preferred;
      const label = `${report.runtime}${report.version ? ` ${report.version}` : ""}`;
      return h(
        "li",
        {
          class: `runtime ${report.available ? "up" : "off"}${preferred ? " preferred" : ""}`,
          dataset: { runtime: report.runtime },
          title: report.available ? label : report.error || "unavailable",
        },
        report.runtime,
        preferred ? h("span", { class: "star", "aria-label": "preferred" }, " ★") : null,
      );
    }),
  );
  const memoryShare = node.memory_bytes ? Math.min(100, (100 * usage.memory) / node.memory_bytes) : 0;
  const cpuShare = node.cpus ? Math.min(100, usage.cpu / node.cpus) : 0;
  const actions = context.session.can_admin
    ? h(
        "div",
        { class: "actions" },
        h("button", { type: "button", onclick: () => nodeAction(node, node.cordoned ? "uncordon" : "cordon", context) }, node.cordoned ? "Uncordon" : "Cordon"),
        h("button", { type: "button", onclick: () => nodeAction(node, "drain", context) }, "Drain"),
        h("button", { type: "button", class: "danger", onclick: () => nodeAction(node, "remove", context) }, "Remove"),
      )
    : null;
  return h(
    "article",
    { class: "card node", dataset: { node: node.name, status: node.status }, "aria-labelledby": `node-${node.id}` },
    h("header", {}, h("h2", { id: `node-${node.id}` }, node.name), h("span", { class: `status status-${node.status}` }, node.status), ...nodeBadges(node)),
    h("p", { class: "platform" }, `${node.os}/${node.arch}`, node.raspberry_pi_model ? ` · ${node.raspberry_pi_model}` : "", node.os_release ? ` · ${node.os_release}` : ""),
    runtimes,
    h(
      "dl",
      { class: "usage" },
      h("dt", {}, "CPU"),
      h("dd", {}, h("meter", { min: 0, max: 100, value: cpuShare.toFixed(1), title: `${cpuShare.toFixed(1)}%` }), ` ${usage.cpu.toFixed(1)}% of ${node.cpus} CPUs`),
      h("dt", {}, "Memory"),
      h("dd", {}, h("meter", { min: 0, max: 100, value: memoryShare.toFixed(1) }), ` ${bytes(usage.memory)} of ${bytes(node.memory_bytes)}`),
      h("dt", {}, "Instances"),
      h("dd", {}, String(usage.instances)),
      h("dt", {}, "Last heartbeat"),
      h("dd", {}, h("time", { datetime: node.last_seen_at, dataset: { relative: "" } }, ago(node.last_seen_at))),
    ),
    actions,
  );
}

async function nodeAction(node, action, context) {
  const question = {
    cordon: `Cordon ${node.name}? Nothing new will be placed on it.`,
    uncordon: `Uncordon ${node.name}?`,
    drain: `Drain ${node.name}? Its instances move to other nodes.`,
    remove: `Remove ${node.name}? Its agent is refused from now on.`,
  }[action];
  if (!window.confirm(question)) return;
  try {
    if (action === "remove") await api("DELETE", `/api/v1/nodes/${encodeURIComponent(node.id)}`);
    else await api("POST", `/api/v1/nodes/${encodeURIComponent(node.id)}/${action}`);
    context.toast(`${node.name}: ${action} done`);
  } catch (error) {
    context.toast(`${node.name}: ${error.message}`);
  }
}

/** Live CPU and memory of each node: the sum of its running instances' samples. */
async function nodeUsage() {
  const instances = await api("GET", "/api/v1/compute/instances?limit=1000");
  const usage = new Map();
  const of = (node) => {
    if (!usage.has(node)) usage.set(node, { cpu: 0, memory: 0, instances: 0 });
    return usage.get(node);
  };
  const running = instances.filter((i) => i.node && i.status === "running");
  for (const instance of instances.filter((i) => i.node)) of(instance.node).instances += 1;
  const samples = await Promise.allSettled(
    running.slice(0, 50).map((i) => api("GET", `/api/v1/compute/instances/${encodeURIComponent(i.id)}/usage`)),
  );
  for (const sample of samples) {
    if (sample.status !== "fulfilled") continue;
    const entry = of(sample.value.node);
    entry.cpu += sample.value.cpu_percent;
    entry.memory += sample.value.memory_bytes;
  }
  return usage;
}

function clusterView(root, context) {
  const grid = h("div", { class: "cards", id: "nodes" });
  root.append(h("h1", {}, "Cluster"), grid);
  const draw = async () => {
    const nodes = await api("GET", "/api/v1/nodes?limit=1000");
    const usage = await nodeUsage().catch(() => new Map());
    if (nodes.length === 0) {
      grid.replaceChildren(h("p", { class: "empty" }, "No nodes yet: join one with diplo join-token create."));
      return;
    }
    grid.replaceChildren(...nodes.map((node) => nodeCard(node, usage.get(node.id) || { cpu: 0, memory: 0, instances: 0 }, context)));
  };
  return liveView(root, draw, (event) => /^(node|instance|deployment|container)\./.test(event.kind));
}

// ---- deployments ----

function instanceLine(instance, names) {
  return h(
    "li",
    { class: "instance", dataset: { instance: instance.id, status: instance.status } },
    h("span", { class: `status status-${instance.status}` }, instance.status),
    ` on ${names.get(instance.node) || instance.node || "—"}`,
    instance.runtime ? ` · ${instance.runtime}` : "",
    ` · rev ${instance.revision}`,
  );
}

function deploymentsView(root) {
  const body = h("tbody");
  const table = h(
    "table",
    { class: "list" },
    h("caption", { class: "sr-only" }, "Deployments"),
    h("thead", {}, h("tr", {}, ["Name", "Status", "Revision", "Replicas", "Rollout", "Instances"].map((c) => h("th", { scope: "col" }, c)))),
    body,
  );
  const empty = h("p", { class: "empty", hidden: true }, "No deployments.");
  root.append(h("h1", {}, "Deployments"), h("div", { class: "scroll" }, table), empty);
  const draw = async () => {
    const [deployments, names] = await Promise.all([api("GET", "/api/v1/deployments?limit=1000"), nodeNames()]);
    empty.hidden = deployments.length > 0;
    table.hidden = deployments.length === 0;
    body.replaceChildren(
      ...deployments.map((d) => {
        const current = d.instances.filter((i) => i.revision === d.revision && i.status === "running").length;
        return h(
          "tr",
          { dataset: { deployment: d.name } },
          h("th", { scope: "row" }, h("a", { href: `#/deployment/${encodeURIComponent(d.name)}` }, d.name)),
          h("td", {}, h("span", { class: `status status-${d.status}` }, d.status)),
          h("td", {}, String(d.revision)),
          h("td", { class: "replicas" }, `${d.running}/${d.replicas}`),
          h("td", {}, h("progress", { max: Math.max(d.replicas, 1), value: current, "aria-label": `rollout of ${d.name}` }), ` ${current}/${d.replicas}`),
          h("td", {}, h("ul", { class: "instances" }, d.instances.map((i) => instanceLine(i, names)))),
        );
      }),
    );
    return deployments.some((d) => TRANSITIONAL.has(d.status) || d.instances.some((i) => TRANSITIONAL.has(i.status)));
  };
  return liveView(root, draw, (event) => /^(deployment|instance|node)\./.test(event.kind));
}

function deploymentView(root, context) {
  const name = context.args[0] || "";
  const summary = h("div", { id: "deployment-summary" });
  const instances = h("ul", { class: "instances", id: "deployment-instances" });
  const logs = h("pre", { id: "logs", class: "output", tabindex: "0", "aria-label": "Logs" });
  const logsTitle = h("h2", {}, "Logs");
  const events = h("ol", { id: "deployment-events", class: "events" });
  const remove = context.session.can_deploy
    ? h("button", { type: "button", class: "danger", id: "delete-deployment", onclick: () => removeDeployment() }, "Delete deployment")
    : null;
  root.append(
    h("p", {}, h("a", { href: "#/deployments" }, "← Deployments")),
    h("h1", {}, name),
    summary,
    remove,
    h("section", { "aria-label": "Instances" }, h("h2", {}, "Instances"), instances),
    h("section", { "aria-label": "Logs" }, logsTitle, logs),
    h("section", { "aria-label": "Events" }, h("h2", {}, "Events"), events),
  );
  let deploymentId = null;
  let logsAbort = null;
  let stopEvents = null;

  const removeDeployment = async () => {
    if (!window.confirm(`Delete ${name}? Its instances are removed.`)) return;
    try {
      await api("DELETE", `/api/v1/deployments/${encodeURIComponent(name)}`);
      context.toast(`${name} is being deleted`);
      location.hash = "#/deployments";
    } catch (error) {
      context.toast(error.message);
    }
  };

  const showLogs = (instance) => {
    if (logsAbort) logsAbort.abort();
    logsAbort = new AbortController();
    logs.textContent = "";
    logsTitle.textContent = `Logs of ${instance.id}`;
    const path = `/api/v1/containers/${encodeURIComponent(instance.container_id)}/logs?follow=true&tail=500`;
    follow(path, (text) => {
      logs.textContent += text;
      if (logs.textContent.length > 200000) logs.textContent = logs.textContent.slice(-100000);
      logs.scrollTop = logs.scrollHeight;
    }, logsAbort.signal).catch((error) => {
      if (error.name !== "AbortError") logs.textContent += `\n[${error.message}]`;
    });
  };

  const draw = async () => {
    const [d, names] = await Promise.all([api("GET", `/api/v1/deployments/${encodeURIComponent(name)}`), nodeNames()]);
    deploymentId = d.id;
    summary.replaceChildren(
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, "Status"),
        h("dd", {}, h("span", { class: `status status-${d.status}`, id: "deployment-status" }, d.status), d.message ? ` — ${d.message}` : ""),
        h("dt", {}, "Image"),
        h("dd", {}, d.image || (d.source ? d.source.repo_url : "—")),
        h("dt", {}, "Revision"),
        h("dd", {}, String(d.revision)),
        h("dt", {}, "Replicas"),
        h("dd", {}, `${d.running} running of ${d.replicas}`),
        h("dt", {}, "Runtime"),
        h("dd", {}, d.runtime_type || "any"),
      ),
    );
    instances.replaceChildren(
      ...d.instances.map((instance) => {
        const line = instanceLine(instance, names);
        if (instance.container_id) {
          line.append(" ", h("button", { type: "button", class: "logs-button", onclick: () => showLogs(instance) }, "Logs"));
        }
        return line;
      }),
    );
    return TRANSITIONAL.has(d.status) || d.instances.some((i) => TRANSITIONAL.has(i.status));
  };
  const redraw = redrawer(draw, (error) => {
    if (error.status === 404) summary.replaceChildren(h("p", { class: "empty" }, `${name} is gone.`));
    else failure(summary, error);
  });
  const ready = draw()
    .then(() => {
      // This deployment's past events, then new ones.
      stopEvents = subscribeEvents((event) => {
        if (event.subject !== deploymentId && !(event.message || "").includes(name)) return;
        events.prepend(h("li", {}, h("time", { datetime: event.at }, new Date(event.at).toLocaleTimeString()), ` ${event.kind}: ${event.message}`));
      }, 0);
    })
    .catch((error) => failure(summary, error));
  return {
    ready,
    onEvent: (event) => {
      if (/^(deployment|instance|node)\./.test(event.kind)) redraw();
    },
    leave: () => {
      if (logsAbort) logsAbort.abort();
      if (stopEvents) stopEvents();
    },
  };
}

// ---- builds ----

function buildsView(root) {
  const body = h("tbody");
  const output = h("pre", { id: "build-output", class: "output", tabindex: "0", "aria-label": "Build output" });
  const title = h("h2", {}, "Output");
  const empty = h("p", { class: "empty", hidden: true }, "No builds.");
  const table = h(
    "table",
    { class: "list" },
    h("caption", { class: "sr-only" }, "Builds"),
    h("thead", {}, h("tr", {}, ["Build", "Status", "Repository", "Image", "Node", "Started"].map((c) => h("th", { scope: "col" }, c)))),
    body,
  );
  root.append(h("h1", {}, "Builds"), h("div", { class: "scroll" }, table), empty, h("section", { "aria-label": "Build output" }, title, output));
  let abort = null;
  const show = (build) => {
    if (abort) abort.abort();
    abort = new AbortController();
    output.textContent = "";
    title.textContent = `Output of ${build.id}`;
    follow(`/api/v1/images/build/${encodeURIComponent(build.id)}/logs?follow=true`, (text) => {
      output.textContent += text;
      output.scrollTop = output.scrollHeight;
    }, abort.signal).catch((error) => {
      if (error.name !== "AbortError") output.textContent += `\n[${error.message}]`;
    });
  };
  const draw = async () => {
    const builds = await api("GET", "/api/v1/images/builds?limit=100");
    empty.hidden = builds.length > 0;
    table.hidden = builds.length === 0;
    body.replaceChildren(
      ...builds.map((b) =>
        h(
          "tr",
          { dataset: { build: b.id } },
          h("th", { scope: "row" }, h("button", { type: "button", class: "link", onclick: () => show(b) }, b.id)),
          h("td", {}, h("span", { class: `status status-${b.status}` }, b.status)),
          h("td", {}, b.git_repo),
          h("td", {}, b.image),
          h("td", {}, b.node_id || "—"),
          h("td", {}, b.started_at ? ago(b.started_at) : "queued"),
        ),
      ),
    );
  };
  const view = liveView(root, draw, (event) => event.kind.startsWith("build."));
  view.leave = () => abort && abort.abort();
  return view;
}

// ---- stacks ----

function stacksView(root) {
  const list = h("div", { id: "stacks" });
  root.append(h("h1", {}, "Stacks"), list);
  const draw = async () => {
    let stacks = [];
    try {
      stacks = await api("GET", "/api/v1/stacks?limit=1000");
    } catch (error) {
      if (error.status !== 404) throw error;
    }
    if (!Array.isArray(stacks) || stacks.length === 0) {
      list.replaceChildren(h("p", { class: "empty" }, "No stacks."));
      return;
    }
    list.replaceChildren(
      h(
        "ul",
        { class: "cards" },
        stacks.map((stack) =>
          h(
            "li",
            { class: "card", dataset: { stack: stack.name } },
            h("h2", {}, stack.name),
            stack.status ? h("span", { class: `status status-${stack.status}` }, stack.status) : null,
            Array.isArray(stack.services) ? h("p", {}, `${stack.services.length} service(s)`) : null,
          ),
        ),
      ),
    );
  };
  return liveView(root, draw, (event) => event.kind.startsWith("stack."));
}

// ---- deploy form ----

/** Words of a command line: split on spaces, '…' and "…" keep theirs. */
export function words(text) {
  const found = [];
  let word = null;
  let quote = null;
  for (const c of text) {
    if (quote) {
      if (c === quote) quote = null;
      else word += c;
    } else if (c === "'" || c === '"') {
      quote = c;
      word = word ?? "";
    } else if (/\s/.test(c)) {
      if (word !== null) found.push(word);
      word = null;
    } else {
      word = (word ?? "") + c;
    }
  }
  if (word !== null) found.push(word);
  return found;
}

function lines(text) {
  return text.split("\n").map((line) => line.trim()).filter(Boolean);
}

function deployView(root, context) {
  if (!context.session.can_deploy) {
    root.append(h("h1", {}, "Deploy"), h("p", { class: "empty" }, "Your role may not deploy."));
    return { ready: Promise.resolve() };
  }
  const error = h("p", { class: "error", role: "alert", id: "deploy-error" });
  const field = (id, label, input, hint) => h("div", { class: "field" }, h("label", { for: id }, label), input, hint ? h("p", { class: "hint", id: `${id}-hint` }, hint) : null);
  const form = h(
    "form",
    { id: "deploy-form", class: "form" },
    field("deploy-name", "Name", h("input", { id: "deploy-name", name: "name", required: true, pattern: "[a-z0-9][a-z0-9-]*", autocomplete: "off" })),
    field("deploy-source", "Image or repository URL", h("input", { id: "deploy-source", name: "source", required: true, autocomplete: "off", "aria-describedby": "deploy-source-hint" }), "An image reference, or the URL of a git repository to build."),
    field("deploy-runtime", "Runtime", h("select", { id: "deploy-runtime", name: "runtime" }, h("option", { value: "" }, "Any (the node's preferred)"), RUNTIMES.map((r) => h("option", { value: r }, r)))),
    field("deploy-replicas", "Replicas", h("input", { id: "deploy-replicas", name: "replicas", type: "number", min: "0", max: "1000", value: "1" })),
    field("deploy-command", "Command", h("input", { id: "deploy-command", name: "command", autocomplete: "off", "aria-describedby": "deploy-command-hint" }), "Optional; words separated by spaces, quotes keep theirs, e.g. sh -c 'echo hi; sleep 3600'."),
    field("deploy-ports", "Ports", h("textarea", { id: "deploy-ports", name: "ports", rows: "2", "aria-describedby": "deploy-ports-hint" }), "One HOST:CONTAINER per line, e.g. 8080:80."),
    field("deploy-env", "Environment", h("textarea", { id: "deploy-env", name: "env", rows: "3", "aria-describedby": "deploy-env-hint" }), "One KEY=VALUE per line."),
    h("button", { type: "submit", id: "deploy-submit" }, "Deploy"),
    error,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const value = (id) => form.querySelector(`#${id}`).value.trim();
    const source = value("deploy-source");
    const isRepo = /^(https?:\/\/|git@|ssh:\/\/)/.test(source) || source.endsWith(".git");
    const body = { name: value("deploy-name"), replicas: Number(value("deploy-replicas") || "1") };
    if (isRepo) body.repo_url = source;
    else body.image = source;
    if (value("deploy-runtime")) body.runtime_type = value("deploy-runtime");
    const command = value("deploy-command");
    if (command) body.command = words(command);
    const ports = {};
    for (const line of lines(value("deploy-ports"))) {
      const [host, container] = line.split(":");
      if (!container) {
        error.textContent = `ports: ${line} is not HOST:CONTAINER`;
        return;
      }
      ports[host.trim()] = container.trim();
    }
    if (Object.keys(ports).length) body.ports = ports;
    const environment = {};
    for (const line of lines(value("deploy-env"))) {
      const at = line.indexOf("=");
      if (at <= 0) {
        error.textContent = `environment: ${line} is not KEY=VALUE`;
        return;
      }
      environment[line.slice(0, at)] = line.slice(at + 1);
    }
    if (Object.keys(environment).length) body.environment = environment;
    try {
      await api("POST", "/api/v1/deployments", body);
      context.toast(`${body.name} deploying`);
      location.hash = `#/deployment/${encodeURIComponent(body.name)}`;
    } catch (failure) {
      const field = failure.problem && failure.problem.field ? `${failure.problem.field}: ` : "";
      error.textContent = `${field}${failure.message}`;
    }
  });
  root.append(h("h1", {}, "Deploy"), form);
  return { ready: Promise.resolve() };
}

// ---- API tokens ----

function tokensView(root, context) {
  if (!context.session.can_admin) {
    root.append(h("h1", {}, "API tokens"), h("p", { class: "empty" }, "Only admins manage API tokens."));
    return { ready: Promise.resolve() };
  }
  const body = h("tbody");
  const created = h("p", { id: "created-token", class: "notice", role: "status" });
  const form = h(
    "form",
    { id: "token-form", class: "form inline" },
    h("div", { class: "field" }, h("label", { for: "token-name" }, "Name"), h("input", { id: "token-name", required: true, autocomplete: "off" })),
    h("div", { class: "field" }, h("label", { for: "token-role" }, "Role"), h("select", { id: "token-role" }, ["viewer", "deployer", "admin"].map((r) => h("option", { value: r }, r)))),
    h("div", { class: "field" }, h("label", { for: "token-ttl" }, "Lifetime"), h("input", { id: "token-ttl", placeholder: "e.g. 30d; empty: never expires", autocomplete: "off" })),
    h("button", { type: "submit" }, "Create token"),
  );
  root.append(
    h("h1", {}, "API tokens"),
    form,
    created,
    h(
      "div",
      { class: "scroll" },
      h(
        "table",
        { class: "list" },
        h("caption", { class: "sr-only" }, "API tokens"),
        h("thead", {}, h("tr", {}, ["Id", "Name", "Role", "Created", "Expires", "State", ""].map((c) => h("th", { scope: "col" }, c)))),
        body,
      ),
    ),
  );
  const draw = async () => {
    const tokens = await api("GET", "/api/v1/api-tokens");
    body.replaceChildren(
      ...tokens.map((t) =>
        h(
          "tr",
          { dataset: { token: t.id } },
          h("th", { scope: "row" }, t.id),
          h("td", {}, t.name),
          h("td", {}, t.role),
          h("td", {}, new Date(t.created_at).toLocaleString()),
          h("td", {}, t.expires_at ? new Date(t.expires_at).toLocaleString() : "never"),
          h("td", {}, t.revoked ? "revoked" : "active"),
          h(
            "td",
            {},
            t.revoked
              ? ""
              : h("button", {
                  type: "button",
                  class: "danger",
                  onclick: async () => {
                    if (!window.confirm(`Revoke ${t.name} (${t.id})?`)) return;
                    try {
                      await api("DELETE", `/api/v1/api-tokens/${encodeURIComponent(t.id)}`);
                    } catch (error) {
                      context.toast(error.message);
                    }
                  },
                }, "Revoke"),
          ),
        ),
      ),
    );
  };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const token = await api("POST", "/api/v1/api-tokens", {
        name: form.querySelector("#token-name").value.trim(),
        role: form.querySelector("#token-role").value,
        ttl: form.querySelector("#token-ttl").value.trim() || null,
      });
      created.replaceChildren("New token (shown once): ", h("code", {}, token.token));
      form.reset();
      await draw();
    } catch (error) {
      created.textContent = error.message;
    }
  });
  return liveView(root, draw, (event) => event.kind.startsWith("api_token."));
}

/** The views by the first part of the URL's fragment. */
export const VIEWS = {
  cluster: clusterView,
  deployments: deploymentsView,
  deployment: deploymentView,
  builds: buildsView,
  stacks: stacksView,
  deploy: deployView,
  tokens: tokensView,
};
