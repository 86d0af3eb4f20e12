// The todo page: the list (GET/POST/PUT/DELETE /api/todos) and the live feed (Server-Sent Events from
// /api/events). No framework, no build step. Text from the API only ever goes through textContent.
"use strict";

(() => {
  const LIMIT = 140; // code points, as the API counts them
  const FEED_SIZE = 50; // entries kept in the feed
  const POLL_MS = 1000; // re-fetch the list this often while the feed is not live
  const REOPEN_MS = 3000; // open a new EventSource this long after the browser gave one up

  const $ = (id) => document.getElementById(id);
  const form = $("add-form");
  const input = $("task");
  const count = $("task-count");
  const limit = $("task-limit");
  const error = $("task-error");
  const list = $("todos");
  const listStatus = $("list-status");
  const feed = $("feed");
  const feedStatus = $("feed-status");

  const todos = new Map(); // id -> todo, as the API last said
  const rows = new Map(); // id -> <li>
  const gone = new Set(); // deleted ids: a late event must not bring one back
  const seen = []; // ids of the events in the feed (an event may arrive twice, with the same id)
  let mutations = 0; // local changes in flight or done: a list fetched meanwhile may be stale
  let poller = null;
  let loaded = false;

  const codePoints = (text) => [...text].length;

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  async function api(method, url, body) {
    const options = { method, headers: { Accept: "application/json" } };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, options);
    } catch {
      throw new ApiError(0, "the API cannot be reached; check your connection");
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!response.ok) {
      // a problem document (RFC 9457): its detail says what is wrong
      const detail = data && typeof data.detail === "string" ? data.detail : `${response.status} ${response.statusText}`;
      throw new ApiError(response.status, detail);
    }
    return data;
  }

  // --- the list ---

  const byCreation = (a, b) =>
    a.createdAt < b.createdAt ? -1 : a.createdAt > b.createdAt ? 1 : a.id < b.id ? -1 : a.id > b.id ? 1 : 0;

  function makeRow(id) {
    const row = document.createElement("li");
    row.className = "todo";
    row.dataset.id = id;
    const box = document.createElement("input");
    box.type = "checkbox";
    box.id = `done-${id}`;
    const label = document.createElement("label");
    label.htmlFor = box.id;
    label.className = "task";
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "delete";
    remove.textContent = "Delete";
    box.addEventListener("change", () => setDone(id, box));
    remove.addEventListener("click", () => destroy(id));
    row.append(box, label, remove);
    return row;
  }

  function fillRow(row, todo) {
    const [box, label, remove] = row.children;
    if (box.getAttribute("aria-busy") !== "true") box.checked = todo.done;
    if (label.textContent !== todo.task) label.textContent = todo.task;
    remove.setAttribute("aria-label", `Delete “${todo.task}”`);
    row.classList.toggle("done", todo.done);
  }

  function render() {
    for (const [id, row] of rows) {
      if (!todos.has(id)) {
        row.remove();
        rows.delete(id);
      }
    }
    [...todos.values()].sort(byCreation).forEach((todo, index) => {
      let row = rows.get(todo.id);
      if (!row) {
        row = makeRow(todo.id);
        rows.set(todo.id, row);
      }
      fillRow(row, todo);
      // move a row only when it is out of place: moving the focused row would drop the keyboard focus
      if (list.children[index] !== row) list.insertBefore(row, list.children[index] || null);
    });
    if (loaded) listStatus.textContent = todos.size ? "" : "Nothing to do. Add a todo above.";
  }

  function upsert(todo) {
    if (!todo || typeof todo.id !== "string" || gone.has(todo.id)) return;
    const known = todos.get(todo.id);
    if (known && known.updatedAt > todo.updatedAt) return; // an older state of this todo
    todos.set(todo.id, todo);
    render();
  }

  function forget(id) {
    gone.add(id);
    todos.delete(id);
    render();
  }

  async function refresh() {
    const before = mutations;
    let fetched;
    try {
      fetched = await api("GET", "/api/todos");
    } catch (problem) {
      listStatus.textContent = `Could not load the todos: ${problem.message}`;
      return;
    }
    if (mutations !== before) return; // a change of ours crossed this fetch: the next one is up to date
    loaded = true;
    todos.clear();
    for (const todo of fetched) todos.set(todo.id, todo);
    render();
  }

  async function change(work) {
    mutations += 1;
    try {
      return await work();
    } finally {
      mutations += 1;
    }
  }

  async function setDone(id, box) {
    box.setAttribute("aria-busy", "true");
    try {
      upsert(await change(() => api("PUT", `/api/todos/${id}`, { done: box.checked })));
    } catch (problem) {
      box.checked = !box.checked;
      listStatus.textContent = `Could not change the todo: ${problem.message}`;
      if (problem.status === 404) forget(id);
    } finally {
      box.removeAttribute("aria-busy");
    }
  }

  async function destroy(id) {
    const row = rows.get(id);
    const next = row && (row.nextElementSibling || row.previousElementSibling);
    const hadFocus = row && row.contains(document.activeElement);
    try {
      await change(() => api("DELETE", `/api/todos/${id}`));
    } catch (problem) {
      if (problem.status !== 404) {
        listStatus.textContent = `Could not delete the todo: ${problem.message}`;
        return;
      }
    }
    forget(id);
    if (hadFocus) (next && next.isConnected ? next.querySelector("button.delete") : input).focus();
  }

  // --- adding a todo ---

  let announce = null;
  function showCount() {
    const used = codePoints(input.value);
    count.textContent = `${used} / ${LIMIT}`;
    count.classList.toggle("over", used > LIMIT);
    // screen readers hear the count once typing pauses, not at every key
    clearTimeout(announce);
    announce = setTimeout(() => {
      limit.textContent =
        used > LIMIT ? `${used - LIMIT} characters over the limit of ${LIMIT}` : `${LIMIT - used} characters left`;
    }, 700);
  }

  function showError(message) {
    error.textContent = message;
    if (message) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }

  input.addEventListener("input", () => {
    showCount();
    if (error.textContent) showError("");
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    if (button.getAttribute("aria-disabled") === "true") return; // one add at a time
    button.setAttribute("aria-disabled", "true");
    try {
      upsert(await change(() => api("POST", "/api/todos", { task: input.value })));
      input.value = "";
      showCount();
      showError("");
    } catch (problem) {
      showError(problem.message);
    } finally {
      button.removeAttribute("aria-disabled");
      input.focus();
    }
  });

  // --- the live feed ---

  const STATES = {
    connecting: "Connecting to the live feed…",
    on: "Live: events appear here as they leave for Telegram.",
    off: "Events are off: this API runs without NATS (NATS_URL is not set), so no events are sent.",
    disconnected: "Events are paused: the API is not connected to NATS right now. Changes wait in its outbox.",
    lost: "The live feed is lost; trying again…",
  };

  function setFeedState(state) {
    feedStatus.dataset.state = state;
    feedStatus.textContent = STATES[state] || STATES.connecting;
    // without live events, the list is fetched every second so other browsers' changes still show
    if (state === "on") {
      clearInterval(poller);
      poller = null;
    } else if (poller === null) {
      poller = setInterval(refresh, POLL_MS);
    }
  }

  function addToFeed(kind, todo, id) {
    if (id) {
      if (seen.includes(id)) return;
      seen.push(id);
      if (seen.length > FEED_SIZE * 4) seen.shift();
    }
    const entry = document.createElement("li");
    entry.className = `event ${kind}`;
    const when = document.createElement("time");
    const now = new Date();
    when.dateTime = now.toISOString();
    when.textContent = now.toLocaleTimeString();
    const badge = document.createElement("span");
    badge.className = "kind";
    badge.textContent = kind;
    const task = document.createElement("span");
    task.className = "task";
    task.textContent = todo.task;
    const state = document.createElement("span");
    state.className = "state";
    state.textContent = todo.done ? "done" : "open";
    entry.append(when, " ", badge, " ", task, " ", state);
    feed.prepend(entry);
    while (feed.children.length > FEED_SIZE) feed.lastElementChild.remove();
  }

  function onEvent(message) {
    let todo;
    try {
      todo = JSON.parse(message.data);
    } catch {
      return;
    }
    const kind = message.type.replace("todos.", "");
    addToFeed(kind, todo, message.lastEventId);
    if (kind === "deleted") forget(todo.id);
    else upsert(todo);
  }

  function openFeed() {
    const source = new EventSource("/api/events");
    source.addEventListener("open", refresh); // after a reconnect, catch up on what the feed missed
    source.addEventListener("status", (message) => {
      try {
        setFeedState(JSON.parse(message.data).events);
      } catch {
        setFeedState("connecting");
      }
    });
    for (const kind of ["created", "updated", "deleted"]) source.addEventListener(`todos.${kind}`, onEvent);
    source.addEventListener("error", () => {
      if (feedStatus.dataset.state !== "off") setFeedState("lost");
      if (source.readyState === EventSource.CLOSED) setTimeout(openFeed, REOPEN_MS);
    });
  }

  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") refresh();
  });

  showCount();
  refresh();
  openFeed();
})();
