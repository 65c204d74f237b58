// The dashboard's shell: session, login and logout, routing by the URL's fragment
// (`#/deployments/web`), and live updates from the event stream handed to the view shown.
import { api, setCsrf, subscribeEvents } from "./api.js";
import { VIEWS, ago } from "./views.js";

const $ = (selector) => document.querySelector(selector);

// Survives as long as the page is not reloaded (tests check that it never is).
window.diploPageId = window.diploPageId || Math.random().toString(36).slice(2);

const state = { session: null, view: null, stopEvents: null };

function showLogin(message = "") {
  state.session = null;
  if (state.stopEvents) state.stopEvents();
  state.stopEvents = null;
  setCsrf(null);
  document.body.dataset.role = "";
  $("header.top").hidden = true;
  $("#view").replaceChildren();
  $("#login").hidden = false;
  $("#login-error").textContent = message;
  $("#login-token").focus();
}

function startSession(session) {
  state.session = session;
  setCsrf(session.csrf_token || null);
  document.body.dataset.role = session.role;
  document.body.classList.toggle("can-deploy", session.can_deploy);
  document.body.classList.toggle("can-admin", session.can_admin);
  for (const item of document.querySelectorAll("[data-needs]")) {
    const need = item.dataset.needs;
    item.hidden = need === "deploy" ? !session.can_deploy : !session.can_admin;
  }
  $("#who").textContent = `${session.name} (${session.role})`;
  $("#login").hidden = true;
  $("header.top").hidden = false;
  state.stopEvents = subscribeEvents((event) => {
    if (state.view && state.view.onEvent) state.view.onEvent(event);
  });
  route();
}

async function route() {
  if (!state.session) return;
  if (state.view && state.view.leave) state.view.leave();
  const hash = location.hash.replace(/^#\/?/, "");
  const [name, ...rest] = hash.split("/").map(decodeURIComponent);
  const make = VIEWS[name || "cluster"] || VIEWS.cluster;
  const root = $("#view");
  root.replaceChildren();
  for (const link of document.querySelectorAll("nav a")) {
    const target = link.getAttribute("href").replace(/^#\/?/, "");
    if (target === (name || "")) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  state.view = make(root, { session: state.session, args: rest, toast });
  await state.view.ready;
}

/** A short message at the bottom of the page. */
export function toast(message) {
  const element = $("#toast");
  element.textContent = message;
  element.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => {
    element.hidden = true;
  }, 5000);
}

$("#login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = $("#login-token").value.trim();
  try {
    const session = await api("POST", "/ui/login", { token });
    $("#login-token").value = "";
    startSession(session);
  } catch (error) {
    $("#login-error").textContent = error.message;
  }
});

$("#logout").addEventListener("click", async () => {
  try {
    await api("POST", "/ui/logout");
  } finally {
    location.hash = "#/";
    showLogin("Logged out.");
  }
});

window.addEventListener("hashchange", route);
// Relative times ("5 s ago") age on screen without asking the server anything.
setInterval(() => {
  for (const element of document.querySelectorAll("time[data-relative]")) {
    element.textContent = ago(element.getAttribute("datetime"));
  }
}, 5000);
window.addEventListener("diplo:unauthenticated", () => {
  if (state.session) showLogin("Your session ended: log in again.");
});

(async () => {
  try {
    startSession(await api("GET", "/ui/session"));
  } catch {
    showLogin();
  }
})();
