/* Archivist web UI: plain DOM, no framework, no network beyond this server's /v1 API.
 * Server data never goes through innerHTML: every string is set with textContent or as a text node. */
"use strict";

(() => {
  const KEY_STORAGE = "archivist.apiKey";
  const THREAD_STORAGE = "archivist.thread."; // + key id + "." + collection: one conversation per collection
  const CHAT_COLLECTION = "archivist.chatCollection"; // the collection the chat was on, kept over a reload
  const ALL = "__all__";
  const HISTORY_TURNS = 10; // earlier question-and-answer turns sent with a follow-up (20 messages)
  const HISTORY_CHARS = 16000; // what the server takes in all (answer/conversation.py MAX_HISTORY_CHARS)
  const KEPT_TURNS = 50; // turns a thread keeps in this browser
  const JOB_POLL_MS = 400;
  const HEADLINE_METRICS = ["ndcg@10", "recall@100", "recall@10", "map@100", "mrr@10", "p@10",
    "citation_precision", "answer_support", "faithfulness"];

  const state = {
    key: null,
    me: null,
    collections: [],
    view: null,
    ask: null, // {controller, hits, collection, citations}
    shownTurn: null, // id of the stored turn the answer card shows (kept out of the thread above it)
    docs: {offset: 0, limit: 50, total: 0},
    evals: [],
    usage: null, // {rows, days}: what the usage chart last drew, redrawn when the width changes
  };

  // ---------- small DOM helpers ----------
  const $ = (id) => document.querySelector(`[data-testid="${id}"]`);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "testid") node.dataset.testid = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) append(node, c);
    return node;
  }

  function append(node, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) child.forEach((c) => append(node, c));
    else node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }

  const SVG_NS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "text") node.textContent = v;
      else if (k === "testid") node.setAttribute("data-testid", v);
      else node.setAttribute(k, String(v));
    }
    for (const c of children) append(node, c);
    return node;
  }

  function show(node, on = true) {
    node.hidden = !on;
  }

  function fmtDate(s) {
    if (!s) return "";
    const d = new Date(s);
    if (Number.isNaN(d.getTime())) return String(s);
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  function fmtNum(v, digits = 0) {
    if (v === null || v === undefined || v === "") return "–";
    const n = Number(v);
    if (!Number.isFinite(n)) return String(v);
    return n.toLocaleString(undefined, {minimumFractionDigits: digits, maximumFractionDigits: digits});
  }

  function fmtMetric(v) {
    const n = Number(v);
    return Number.isFinite(n) ? n.toFixed(4) : "–";
  }

  function toast(message) {
    const t = $("toast");
    t.textContent = message;
    show(t);
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => show(t, false), 4000);
  }

  // ---------- API ----------
  class ApiError extends Error {
    constructor(status, code, message, requestId) {
      super(message);
      this.status = status;
      this.code = code;
      this.requestId = requestId;
    }
  }

  function headers(extra) {
    const h = new Headers(extra || {});
    if (state.key) h.set("Authorization", `Bearer ${state.key}`);
    return h;
  }

  async function errorFrom(resp) {
    let body = null;
    try {
      body = await resp.json();
    } catch (_) {
      /* not JSON */
    }
    const e = (body && body.error) || {};
    const requestId = e.request_id || resp.headers.get("X-Request-ID") || "";
    return new ApiError(resp.status, e.code || `http_${resp.status}`,
      e.message || `${resp.status} ${resp.statusText || "error"}`, requestId);
  }

  async function api(method, path, {json, form, signal, allow401} = {}) {
    const init = {method, headers: headers({Accept: "application/json"}), signal};
    if (json !== undefined) {
      init.headers.set("Content-Type", "application/json");
      init.body = JSON.stringify(json);
    } else if (form) {
      init.body = form; // the browser sets the multipart boundary
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, "network", `cannot reach the server: ${err.message}`, "");
    }
    if (!resp.ok) {
      const err = await errorFrom(resp);
      if (resp.status === 401 && !allow401) onUnauthorized(err);
      throw err;
    }
    if (resp.status === 204) return null;
    return resp.json();
  }

  const enc = encodeURIComponent;

  /** Await `promise` with `node` marked aria-busy meanwhile: screen readers (and tests) wait for the redraw. */
  async function busy(node, promise) {
    node.setAttribute("aria-busy", "true");
    try {
      return await promise;
    } finally {
      node.removeAttribute("aria-busy");
    }
  }

  function renderError(node, err) {
    node.replaceChildren();
    if (!err) {
      show(node, false);
      return;
    }
    const code = err.code ? el("code", {class: "err-code", testid: "error-code"}, err.code) : null;
    node.append(el("span", {class: "err-msg", testid: "error-message"}, err.message || String(err)));
    if (code) node.append(" ", code);
    if (err.requestId) {
      node.append(el("span", {class: "err-rid"}, " request id ",
        el("code", {testid: "error-request-id"}, err.requestId)));
    }
    show(node);
  }

  /** Whether the server lets this key do `what` ("read", "write", "admin"): its answer, never a rule of ours. */
  function can(what) {
    return !!(state.me && state.me.can && state.me.can[what] === true);
  }

  // ---------- sign in ----------
  function onUnauthorized(err) {
    forgetThreads();
    localStorage.removeItem(KEY_STORAGE);
    state.key = null;
    state.me = null;
    showSignin(err ? `Your key was rejected: ${err.message}` : "");
  }

  function showSignin(message) {
    show($("nav"), false);
    show($("whoami"), false);
    for (const v of document.querySelectorAll(".view")) show(v, false);
    show($("view-signin"));
    const box = $("signin-error");
    if (message) {
      box.textContent = message;
      show(box);
    } else {
      show(box, false);
    }
    $("signin-key").focus();
  }

  async function signIn(key, {fromStorage = false} = {}) {
    state.key = key;
    const box = $("signin-error");
    try {
      const me = await api("GET", "/v1/me", {allow401: true});
      state.me = me;
      localStorage.setItem(KEY_STORAGE, key);
      $("signin-key").value = "";
      show(box, false);
      onSignedIn();
    } catch (err) {
      state.key = null;
      state.me = null;
      if (fromStorage && err.status === 401) {
        forgetThreads(keyIdOf(key)); // a rejected key (revoked) leaves nothing of its conversations behind
        localStorage.removeItem(KEY_STORAGE);
      }
      showSignin();
      if (err.status === 401) {
        renderError(box, new ApiError(401, err.code, "That API key was not accepted (401): check it, or create one with archivist keys create.", err.requestId));
      } else {
        renderError(box, err);
      }
    }
  }

  function signOut() {
    if (state.ask && state.ask.controller) state.ask.controller.abort();
    forgetThreads(); // signing out leaves nothing of this key's conversations in the browser
    localStorage.removeItem(CHAT_COLLECTION);
    localStorage.removeItem(KEY_STORAGE);
    state.key = null;
    state.me = null;
    state.collections = [];
    resetAnswer();
    showSignin("");
  }

  async function onSignedIn() {
    const me = state.me;
    $("me-name").textContent = me.name || me.id || "key";
    $("me-scopes").replaceChildren(...(me.scopes || []).map((s) => el("span", {class: "chip"}, s)));
    const limited = Array.isArray(me.collections);
    $("me-name").title = limited ? `collections: ${me.collections.join(", ")}` : "all collections";
    show($("view-signin"), false);
    show($("nav"));
    show($("whoami"));
    show($("collection-create"), can("admin"));
    show($("upload-card"), can("write"));
    await loadCollections();
    resetAnswer(); // and draw the conversation this browser kept for the chosen collection
    const initial = (location.hash || "").replace("#", "");
    go(["chat", "library", "evals", "usage"].includes(initial) ? initial : "chat");
  }

  // ---------- navigation ----------
  function go(view) {
    state.view = view;
    for (const v of document.querySelectorAll(".view")) show(v, false);
    show($(`view-${view}`));
    for (const b of document.querySelectorAll(".tab")) {
      if (b.dataset.view === view) b.setAttribute("aria-current", "page");
      else b.removeAttribute("aria-current");
    }
    if (location.hash !== `#${view}`) history.replaceState(null, "", `#${view}`);
    if (view === "library") loadDocuments();
    if (view === "evals") loadEvals();
    if (view === "usage") loadUsage();
    if (view === "chat") $("chat-question").focus();
  }

  // ---------- collections ----------
  async function loadCollections() {
    try {
      const data = await api("GET", "/v1/collections");
      state.collections = (data && data.collections) || [];
    } catch (err) {
      if (err.status === 401) return;
      state.collections = [];
      renderError($("library-error"), err);
    }
    fillCollectionSelects();
  }

  function fillCollectionSelects() {
    const chat = $("chat-collection");
    const lib = $("library-collection");
    const prevChat = chat.value || localStorage.getItem(CHAT_COLLECTION);
    const prevLib = lib.value;
    chat.replaceChildren(el("option", {value: ALL}, "All collections"));
    lib.replaceChildren();
    for (const c of state.collections) {
      const label = c.documents !== undefined && c.documents !== null ? `${c.name} (${c.documents})` : c.name;
      chat.append(el("option", {value: c.name}, label));
      lib.append(el("option", {value: c.name, title: c.description || ""}, label));
    }
    if ([...chat.options].some((o) => o.value === prevChat)) chat.value = prevChat;
    if ([...lib.options].some((o) => o.value === prevLib)) lib.value = prevLib;
    if (!state.collections.length) {
      lib.append(el("option", {value: "", disabled: true}, "no collections"));
      lib.value = "";
    }
  }

  function collectionParam(name) {
    return name && name !== ALL ? name : null;
  }

  // ---------- chat: streaming answers ----------
  function resetAnswer() {
    show($("answer-card"), false);
    state.shownTurn = null;
    $("answer-text").replaceChildren();
    $("answer-text").classList.remove("streaming");
    $("sources-list").replaceChildren();
    renderThread();
  }

  // ---------- chat: the conversation thread, kept in this browser per key and collection ----------
  function threadKey(collection) {
    return state.me ? `${THREAD_STORAGE}${state.me.id}.${collection || ALL}` : null;
  }

  function loadThread(key) {
    if (!key) return [];
    try {
      const turns = JSON.parse(localStorage.getItem(key) || "[]");
      return Array.isArray(turns) ? turns.filter((t) => t && typeof t.question === "string") : [];
    } catch (_) {
      return []; // a damaged entry starts a new conversation rather than breaking the chat
    }
  }

  function saveThread(key, turns) {
    let kept = turns.slice(-KEPT_TURNS);
    for (;;) {
      try {
        if (kept.length) localStorage.setItem(key, JSON.stringify(kept));
        else localStorage.removeItem(key);
        return;
      } catch (_) {
        if (!kept.length) return;
        kept = kept.slice(1); // storage is full: the oldest turns go first
        if (!kept.length) toast("This browser's storage is full: the conversation is not kept.");
      }
    }
  }

  // The id part of a key (ak_<id>_<secret>): what its conversations are stored under, known even when the server
  // no longer accepts the key.
  function keyIdOf(key) {
    const m = /^ak_([0-9a-f]+)_/.exec(key || "");
    return m ? m[1] : null;
  }

  function forgetThreads(keyId = state.me ? state.me.id : null) {
    if (!keyId) return;
    const prefix = `${THREAD_STORAGE}${keyId}.`;
    const keys = [];
    for (let i = 0; i < localStorage.length; i += 1) {
      const k = localStorage.key(i);
      if (k && k.startsWith(prefix)) keys.push(k);
    }
    keys.forEach((k) => localStorage.removeItem(k));
  }

  /** The earlier turns of a conversation as the API's `history`, oldest first: the latest HISTORY_TURNS whole
   * turns that fit HISTORY_CHARS together. */
  function historyOf(turns) {
    const kept = [];
    let chars = 0;
    for (const t of turns.slice(-HISTORY_TURNS).reverse()) {
      const turn = [{role: "user", content: t.question}];
      if (typeof t.answer === "string" && t.answer.trim()) turn.push({role: "assistant", content: t.answer});
      const size = turn.reduce((n, m) => n + m.content.length, 0);
      if (!t.question.trim() || chars + size > HISTORY_CHARS) break;
      chars += size;
      kept.unshift(...turn);
    }
    return kept;
  }

  function saveTurn(run, data) {
    const turns = loadThread(run.threadKey);
    const turn = {
      id: `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`,
      question: run.question,
      collection: run.collection,
      answer: String(data.answer || ""),
      segments: Array.isArray(data.segments) ? data.segments : null,
      refused: !!data.refused,
      citations: (run.citations || []).map((c) => ({
        n: c.n, document: c.document, collection: c.collection, title: c.title, heading_path: c.heading_path,
        source: c.source, page: c.page, span: c.span, quote: c.quote,
      })),
      at: new Date().toISOString(),
    };
    saveThread(run.threadKey, [...turns, turn]);
    if (state.ask === run) {
      state.shownTurn = turn.id;
      const box = $("chat-question");
      if (box.value.trim() === run.question) box.value = ""; // answered: ready for the follow-up
    }
    renderThread();
  }

  function chatThreadKey() {
    return threadKey($("chat-collection").value);
  }

  function renderThread() {
    const turns = loadThread(chatThreadKey());
    const earlier = turns.filter((t) => t.id !== state.shownTurn);
    $("thread").replaceChildren(...earlier.map(threadTurn));
    $("thread-count").textContent = turns.length ? `(${turns.length} turn${turns.length === 1 ? "" : "s"})` : "";
    show($("thread-wrap"), turns.length > 0);
    show($("thread"), earlier.length > 0);
    show($("chat-empty"), !turns.length && $("answer-card").hidden);
  }

  function threadTurn(t) {
    const open = (c) => openCitation({hits: [], collection: t.collection}, c);
    const answer = el("div", {class: `turn-answer${t.refused ? " refused" : ""}`, testid: "turn-answer"});
    appendAnswerText(answer, t, t.citations || [], open, "thread-citation");
    const cites = t.citations || [];
    const sources = cites.length
      ? el("details", {class: "turn-sources"},
        el("summary", {}, `${cites.length} source${cites.length === 1 ? "" : "s"}`),
        el("ol", {class: "turn-source-list"}, cites.map((c) => el("li", {},
          el("button", {type: "button", class: "link", testid: "turn-source", onclick: () => open(c)},
            `[${c.n}] ${citationLabel(c)}`)))))
      : null;
    return el("li", {class: "turn", testid: "thread-turn", "data-turn": t.id},
      el("p", {class: "turn-question", testid: "turn-question"}, t.question), answer, sources);
  }

  function newConversation() {
    if (state.ask && state.ask.controller) state.ask.controller.abort();
    state.ask = null;
    setAsking(false);
    saveThread(chatThreadKey(), []);
    resetAnswer();
    $("chat-question").focus();
  }

  function setStatus(text, kind) {
    const b = $("answer-status");
    b.textContent = text;
    b.className = `badge${kind ? ` badge-${kind}` : ""}`;
    b.dataset.state = kind || "";
  }

  function setAsking(on) {
    $("chat-submit").disabled = on;
    show($("chat-stop"), on);
  }

  async function ask(question) {
    if (state.ask && state.ask.controller) state.ask.controller.abort();
    const collection = collectionParam($("chat-collection").value);
    const controller = new AbortController();
    const key = chatThreadKey();
    const history = historyOf(loadThread(key));
    const run = {controller, hits: [], collection, citations: [], done: null, gotCitations: false, tokens: 0,
      question, threadKey: key, result: null};
    state.ask = run;
    state.shownTurn = null; // the answer shown so far joins the thread above
    renderThread();

    show($("chat-empty"), false);
    show($("answer-card"));
    $("answer-question").textContent = question;
    const text = $("answer-text");
    text.replaceChildren();
    text.dataset.tokens = "0";
    text.setAttribute("aria-busy", "true"); // screen readers get the finished answer, not every token
    text.classList.add("streaming");
    text.classList.remove("refused");
    $("answer-meta").textContent = "";
    $("sources-list").replaceChildren();
    show($("sources-title"), false);
    renderError($("answer-error"), null);
    setStatus("retrieving…", "busy");
    setAsking(true);

    const body = {question};
    if (collection) body.collection = collection;
    if (history.length) body.history = history;
    let resp;
    try {
      resp = await fetch("/v1/answer", {
        method: "POST",
        headers: headers({"Content-Type": "application/json", Accept: "text/event-stream"}),
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      if (!resp.ok) {
        const err = await errorFrom(resp);
        if (resp.status === 401) onUnauthorized(err);
        throw err;
      }
      const ctype = resp.headers.get("Content-Type") || "";
      if (!ctype.includes("text/event-stream")) {
        // A server that answered with plain JSON: show it all at once.
        const answer = await resp.json();
        onEvent(run, "citations", answer);
        onEvent(run, "done", answer);
      } else {
        await readSSE(resp.body, (event, data) => onEvent(run, event, data));
      }
      if (state.ask === run && !run.gotCitations && !run.failed) {
        throw new ApiError(0, "incomplete", "the answer stream ended before the checked answer arrived", "");
      }
      if (run.result && !run.failed) saveTurn(run, run.result);
    } catch (err) {
      if (state.ask !== run) return;
      if (err.name === "AbortError") {
        setStatus("stopped", "muted");
      } else {
        fail(run, err);
      }
    } finally {
      if (state.ask === run) {
        text.classList.remove("streaming");
        text.removeAttribute("aria-busy");
        setAsking(false);
      }
    }
  }

  function fail(run, err) {
    run.failed = true;
    setStatus("error", "error");
    renderError($("answer-error"), err instanceof ApiError ? err : new ApiError(0, "error", String(err.message || err), ""));
  }

  /** Read a text/event-stream body, calling onEvent(name, parsedData) per frame. */
  async function readSSE(stream, onEvent) {
    const reader = stream.getReader();
    const decoder = new TextDecoder("utf-8");
    let buf = "";
    const flush = (frame) => {
      let event = "message";
      const data = [];
      for (const raw of frame.split("\n")) {
        const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
        if (!line || line.startsWith(":")) continue;
        const i = line.indexOf(":");
        const field = i < 0 ? line : line.slice(0, i);
        let value = i < 0 ? "" : line.slice(i + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") event = value;
        else if (field === "data") data.push(value);
      }
      if (!data.length) return;
      const text = data.join("\n");
      let parsed;
      try {
        parsed = JSON.parse(text);
      } catch (_) {
        parsed = {text};
      }
      onEvent(event, parsed);
    };
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += decoder.decode(value, {stream: true}).replace(/\r\n/g, "\n");
      let idx;
      while ((idx = buf.indexOf("\n\n")) >= 0) {
        const frame = buf.slice(0, idx);
        buf = buf.slice(idx + 2);
        flush(frame);
      }
    }
    buf += decoder.decode();
    if (buf.trim()) flush(buf);
  }

  function onEvent(run, event, data) {
    if (state.ask !== run) return;
    const text = $("answer-text");
    switch (event) {
      case "retrieval":
        run.hits = (data && data.hits) || [];
        setStatus(`${run.hits.length} passages · writing…`, "busy");
        break;
      case "token":
        if (data && typeof data.text === "string") {
          let live = text.querySelector('[data-testid="answer-stream"]');
          if (!live) {
            live = el("span", {testid: "answer-stream"});
            text.append(live);
          }
          live.append(document.createTextNode(data.text));
          run.tokens += 1;
          text.dataset.tokens = String(run.tokens); // kept after the checked answer replaces the stream
        }
        break;
      case "citations":
        run.gotCitations = true;
        run.citations = (data && data.citations) || [];
        run.result = data || {};
        renderAnswer(run, data || {});
        break;
      case "done":
        run.done = data;
        run.result = {...(run.result || {}), ...(data || {})};
        // The done event carries the answer's segments: draw the links from them (the citations event may not).
        if (!run.gotCitations || (Array.isArray(data && data.segments) && !run.segmented)) {
          run.gotCitations = true;
          run.citations = (data && data.citations) || run.citations;
          renderAnswer(run, run.result);
        }
        renderMeta(run, data || {});
        if (data && data.refused) renderClosest(run, data);
        break;
      case "error": {
        const e = (data && data.error) || data || {};
        fail(run, new ApiError(0, e.code || "error", e.message || "the answer failed", e.request_id || ""));
        break;
      }
      default:
        break;
    }
  }

  /** Append an answer's text to `node`, its citation links built from the answer's segments: a "[3]" inside
   * a text segment is the document's own mark and stays text. Without segments, the text has no links at all. */
  function appendAnswerText(node, data, citations, open, testid) {
    const segments = Array.isArray(data.segments) ? data.segments : null;
    if (!segments) {
      node.append(document.createTextNode(String(data.answer || "")));
      return;
    }
    const byN = new Map(citations.map((c) => [Number(c.n), c]));
    for (const s of segments) {
      if (!s) continue;
      if (s.type === "citation") {
        const c = byN.get(Number(s.n));
        node.append(c ? citeButton(c, open, testid) : document.createTextNode(`[${s.n}]`));
      } else if (typeof s.text === "string") {
        node.append(document.createTextNode(s.text));
      }
    }
  }

  function citeButton(c, open, testid) {
    const label = citationLabel(c);
    return el("button", {type: "button", class: "cite", testid, "data-n": c.n, title: label,
      "aria-label": `Open source ${c.n}: ${label}`, onclick: () => open(c)}, `[${c.n}]`);
  }

  function renderAnswer(run, data) {
    const text = $("answer-text");
    text.classList.remove("streaming");
    text.replaceChildren();
    const refused = !!data.refused;
    text.classList.toggle("refused", refused);
    run.segmented = Array.isArray(data.segments);
    appendAnswerText(text, data, run.citations, (c) => openCitation(run, c), "citation-link");

    const list = $("sources-list");
    list.replaceChildren();
    if (refused) {
      setStatus("not in the documents", "warn");
      renderClosest(run, data);
    } else {
      const support = Number(data.support);
      const label = Number.isFinite(support) ? `support ${(support * 100).toFixed(0)}%` : "answered";
      setStatus(label, support >= 0.5 || !Number.isFinite(support) ? "ok" : "warn");
      show($("sources-title"), run.citations.length > 0);
      $("sources-title").textContent = "Sources";
      for (const c of run.citations) list.append(sourceItem(run, c));
    }
    if (Array.isArray(data.unsupported) && data.unsupported.length) {
      $("answer-meta").textContent = `${data.unsupported.length} unsupported claim(s) removed by citation checking.`;
    }
  }

  function citationLabel(c) {
    const parts = [c.title, ...(c.heading_path || [])].filter(Boolean);
    const uniq = parts.filter((p, i) => parts.findIndex((q) => q.trim().toLowerCase() === p.trim().toLowerCase()) === i);
    return uniq.join(" › ") || c.source || c.document || "source";
  }

  function sourceItem(run, c) {
    const page = c.page !== null && c.page !== undefined ? `page ${c.page}` : null;
    const where = [c.source, page].filter(Boolean).join(" · ");
    return el("li", {class: "source", testid: "source-item", "data-n": c.n},
      el("button", {type: "button", class: "source-open", testid: "source-open", onclick: () => openCitation(run, c)},
        el("span", {class: "source-n"}, `[${c.n}]`), " ",
        el("span", {class: "source-title", testid: "source-title"}, citationLabel(c))),
      where ? el("div", {class: "source-where muted small"}, where) : null,
      c.quote ? el("blockquote", {class: "quote", testid: "source-quote"}, c.quote) : null);
  }

  function renderClosest(run, data) {
    const list = $("sources-list");
    let items = Array.isArray(data.sources) && data.sources.length ? data.sources : null;
    if (!items) {
      items = run.hits.slice(0, 3).map((h) => ({
        document: h.document_id || h.document, title: h.title, source: h.source, score: h.score,
        collection: h.collection, heading_path: h.heading_path, span: [h.start, h.end], quote: h.text,
      }));
    }
    if (!items.length) return;
    list.replaceChildren();
    $("sources-title").textContent = "Closest sources";
    show($("sources-title"));
    for (const s of items) {
      const hit = run.hits.find((h) => (h.document_id || h.document) === (s.document || s.document_id));
      const target = {
        ...s,
        document: s.document || s.document_id,
        collection: s.collection || (hit && hit.collection),
        span: s.span || (hit ? [hit.start, hit.end] : null),
        heading_path: s.heading_path || (hit && hit.heading_path) || [],
      };
      const score = Number.isFinite(Number(s.score)) ? ` · score ${Number(s.score).toFixed(3)}` : "";
      list.append(el("li", {class: "source closest", testid: "closest-source"},
        el("button", {type: "button", class: "source-open", testid: "source-open", onclick: () => openCitation(run, target)},
          el("span", {class: "source-title"}, citationLabel(target))),
        el("div", {class: "source-where muted small"}, `${target.source || ""}${score}`)));
    }
  }

  function renderMeta(run, data) {
    const bits = [];
    if (data.mode) bits.push(data.mode === "extractive" ? "extractive (no LLM)" : data.mode);
    const t = data.timings_ms && data.timings_ms.total;
    if (t !== undefined) bits.push(`${fmtNum(t)} ms`);
    const u = data.usage || {};
    const tokens = u.total_tokens ?? ((u.input_tokens || 0) + (u.output_tokens || 0));
    if (tokens) bits.push(`${fmtNum(tokens)} tokens`);
    if (Array.isArray(data.unsupported) && data.unsupported.length) {
      bits.push(`${data.unsupported.length} unsupported claim(s) removed`);
    }
    for (const w of data.warnings || []) bits.push(`warning: ${w}`);
    $("answer-meta").textContent = bits.join(" · ");
  }

  // ---------- document viewer ----------
  /** Python counts code points, JavaScript UTF-16 units: map a code point offset into the string. */
  function cpToIndex(text, cp) {
    if (!/[\uD800-\uDBFF]/.test(text)) return Math.min(cp, text.length);
    let i = 0;
    let n = 0;
    while (i < text.length && n < cp) {
      const code = text.charCodeAt(i);
      i += code >= 0xd800 && code <= 0xdbff && i + 1 < text.length ? 2 : 1;
      n += 1;
    }
    return i;
  }

  async function fetchDocument(collection, id) {
    return api("GET", `/v1/collections/${enc(collection)}/documents/${enc(id)}`);
  }

  async function openCitation(run, c) {
    const id = c.document || c.document_id;
    const dialog = $("doc-viewer");
    const body = $("doc-viewer-text");
    $("doc-viewer-title").textContent = citationLabel(c);
    $("doc-viewer-meta").textContent = "loading…";
    body.replaceChildren();
    renderError($("doc-viewer-error"), null);
    if (!dialog.open) dialog.showModal();

    // Which collection holds it: the citation's own, else the hit's, else the one asked, else search them.
    const hit = run.hits.find((h) => (h.document_id || h.document) === id);
    const candidates = [c.collection, hit && hit.collection, run.collection].filter(Boolean);
    if (!candidates.length) candidates.push(...state.collections.map((x) => x.name));
    let doc = null;
    let collection = null;
    let lastErr = null;
    for (const name of [...new Set(candidates)]) {
      try {
        doc = await fetchDocument(name, id);
        collection = name;
        break;
      } catch (err) {
        lastErr = err;
        if (err.status !== 404) break;
      }
    }
    if (!doc) {
      $("doc-viewer-meta").textContent = "";
      renderError($("doc-viewer-error"), lastErr || new ApiError(404, "not_found", "document not found", ""));
      return;
    }
    const text = String(doc.text || "");
    const span = Array.isArray(c.span) ? c.span : null;
    let start = span ? cpToIndex(text, Number(span[0])) : -1;
    let end = span ? cpToIndex(text, Number(span[1])) : -1;
    if (c.quote && (start < 0 || text.slice(start, end).trim() !== String(c.quote).trim())) {
      const at = text.indexOf(c.quote); // the span is authoritative; the quote only rescues a bad span
      if (at >= 0 && start < 0) {
        start = at;
        end = at + c.quote.length;
      }
    }
    $("doc-viewer-title").textContent = doc.title || citationLabel(c);
    const meta = [collection, doc.source, c.page !== null && c.page !== undefined ? `page ${c.page}` : null,
      span ? `chars ${span[0]}–${span[1]}` : null];
    $("doc-viewer-meta").textContent = meta.filter(Boolean).join(" · ");
    if (start >= 0 && end > start) {
      const mark = el("mark", {testid: "doc-highlight", tabindex: "-1"}, text.slice(start, end));
      body.append(document.createTextNode(text.slice(0, start)), mark, document.createTextNode(text.slice(end)));
      requestAnimationFrame(() => {
        mark.scrollIntoView({block: "center"});
        mark.focus({preventScroll: true});
      });
    } else {
      body.append(document.createTextNode(text));
    }
  }

  // ---------- library ----------
  function libraryCollection() {
    return $("library-collection").value || null;
  }

  async function loadDocuments() {
    const c = libraryCollection();
    const tbody = $("documents-body");
    renderError($("library-error"), null);
    if (!c) {
      tbody.replaceChildren();
      show($("documents-empty"));
      $("documents-total").textContent = "";
      show($("documents-pager"), false);
      return;
    }
    const {offset, limit} = state.docs;
    let data;
    try {
      data = await api("GET", `/v1/collections/${enc(c)}/documents?sort=newest&limit=${limit}&offset=${offset}`);
    } catch (err) {
      if (err.status !== 401) renderError($("library-error"), err);
      return;
    }
    if (libraryCollection() !== c) return;
    const docs = (data && data.documents) || [];
    state.docs.total = Number(data && data.total) || docs.length;
    $("documents-total").textContent = `(${state.docs.total})`;
    tbody.replaceChildren(...docs.map((d) => documentRow(c, d)));
    show($("documents-empty"), docs.length === 0);
    const paged = state.docs.total > limit;
    show($("documents-pager"), paged);
    if (paged) {
      $("documents-range").textContent = `${offset + 1}–${offset + docs.length} of ${state.docs.total}`;
      $("documents-prev").disabled = offset === 0;
      $("documents-next").disabled = offset + limit >= state.docs.total;
    }
  }

  function documentRow(collection, d) {
    const id = d.id || d.document_id;
    const open = el("button", {type: "button", class: "link", testid: "document-open",
      onclick: () => openCitation({hits: [], collection}, {document: id, title: d.title, collection})},
    d.title || id);
    const del = can("write")
      ? el("button", {type: "button", class: "btn btn-danger btn-small", testid: "document-delete",
        "aria-label": `Delete ${d.title || id}`, onclick: () => deleteDocument(collection, id, d.title || id)}, "Delete")
      : null;
    return el("tr", {testid: "document-row", "data-id": id},
      el("td", {class: "title-cell"}, open),
      el("td", {class: "mono small ellipsis source-cell", title: d.source || ""}, d.source || ""),
      el("td", {class: "num", "data-label": "chunks"}, fmtNum(d.chunk_count ?? d.chunks)),
      el("td", {class: "num", "data-label": "chars"}, fmtNum(d.char_count ?? d.chars)),
      el("td", {class: "small nowrap"}, fmtDate(d.updated_at || d.created_at)),
      el("td", {class: "actions"}, del));
  }

  async function deleteDocument(collection, id, title) {
    if (!window.confirm(`Delete "${title}" from ${collection}?`)) return;
    try {
      await api("DELETE", `/v1/collections/${enc(collection)}/documents/${enc(id)}`);
      toast(`Deleted ${title}`);
      await loadDocuments();
      loadCollections();
    } catch (err) {
      if (err.status !== 401) renderError($("library-error"), err);
    }
  }

  async function createCollection(ev) {
    ev.preventDefault();
    const name = $("collection-name").value.trim();
    const description = $("collection-description").value.trim();
    const status = $("collection-create-status");
    status.className = "alert";
    try {
      const body = {name};
      if (description) body.description = description;
      await api("POST", "/v1/collections", {json: body});
      $("collection-name").value = "";
      $("collection-description").value = "";
      status.className = "alert alert-ok";
      status.textContent = `Created collection ${name}.`;
      show(status);
      await loadCollections();
      $("library-collection").value = name;
      state.docs.offset = 0;
      loadDocuments();
    } catch (err) {
      if (err.status === 401) return;
      status.className = "alert alert-error";
      renderError(status, err);
    }
  }

  async function submitUpload(ev) {
    ev.preventDefault();
    const c = libraryCollection();
    const input = $("upload-file");
    if (!c) return renderError($("library-error"), new ApiError(0, "no_collection", "create or choose a collection first", ""));
    if (!input.files || !input.files.length) return renderError($("library-error"), new ApiError(0, "no_file", "choose a file to upload", ""));
    const file = input.files[0];
    const form = new FormData();
    form.append("file", file, file.name);
    await startJob(c, file.name, () => api("POST", `/v1/collections/${enc(c)}/documents`, {form}));
    input.value = "";
  }

  async function submitPaste(ev) {
    ev.preventDefault();
    const c = libraryCollection();
    if (!c) return renderError($("library-error"), new ApiError(0, "no_collection", "create or choose a collection first", ""));
    const title = $("paste-title").value.trim();
    const text = $("paste-text").value;
    const ok = await startJob(c, title, () => api("POST", `/v1/collections/${enc(c)}/documents`, {json: {title, text}}));
    if (ok) {
      $("paste-title").value = "";
      $("paste-text").value = "";
    }
  }


  // A job that could not be submitted or followed: mark it failed and show the API's error.
  function jobFailed(status, detail, err) {
    setJobStatus(status, "failed");
    const box = el("div", {class: "alert alert-error"});
    renderError(box, err);
    detail.replaceChildren(box);
    return false;
  }
  async function startJob(collection, label, submit) {
    renderError($("library-error"), null);
    const card = el("div", {class: "job", testid: "job"});
    const title = el("div", {class: "job-title"}, el("strong", {}, label), " → ", el("span", {class: "mono"}, collection));
    const status = el("span", {class: "badge badge-busy", testid: "job-status", "data-status": "submitting"}, "submitting");
    const bar = el("progress", {class: "bar", testid: "job-progress", max: "1", value: "0", "aria-label": `Progress of ${label}`});
    const detail = el("div", {class: "job-detail small muted", testid: "job-detail"});
    card.append(el("div", {class: "job-head"}, title, status), bar, detail);
    $("jobs").prepend(card);
    while ($("jobs").children.length > 5) $("jobs").lastElementChild.remove();

    let job;
    try {
      job = await submit();
    } catch (err) {
      return jobFailed(status, detail, err);
    }
    const id = job && (job.job_id || job.id);
    card.dataset.jobId = id || "";
    setJobStatus(status, (job && job.status) || "queued");
    if (!id) return true;
    for (;;) {
      let j;
      try {
        j = await api("GET", `/v1/jobs/${enc(id)}`);
      } catch (err) {
        return jobFailed(status, detail, err);
      }
      setJobStatus(status, j.status);
      const p = j.progress || {};
      const total = Number(p.total) || 0;
      const done = Number(p.done) || 0;
      if (total > 0) {
        bar.max = total;
        bar.value = Math.min(done, total);
        detail.textContent = `${done} / ${total}`;
      } else if (j.status === "running") {
        bar.removeAttribute("value"); // indeterminate
      }
      if (j.status === "succeeded") {
        bar.max = 1;
        bar.value = 1;
        detail.textContent = summarizeResult(j.result);
        loadDocuments();
        loadCollections();
        return true;
      }
      if (j.status === "failed") {
        const e = typeof j.error === "string" ? {message: j.error} : (j.error || {});
        const box = el("div", {class: "alert alert-error"});
        renderError(box, new ApiError(0, e.code || "job_failed", e.message || "the job failed", e.request_id || ""));
        detail.replaceChildren(box);
        return false;
      }
      await new Promise((r) => setTimeout(r, JOB_POLL_MS));
    }
  }

  function setJobStatus(node, status) {
    node.textContent = status;
    node.dataset.status = status;
    const kind = {succeeded: "ok", failed: "error", queued: "muted", running: "busy"}[status] || "busy";
    node.className = `badge badge-${kind}`;
  }

  function summarizeResult(result) {
    if (!result) return "done";
    if (typeof result !== "object") return String(result);
    const parts = [];
    const counts = result.counts || result;
    for (const k of ["added", "updated", "unchanged", "removed", "skipped", "failed"]) {
      const v = counts[k];
      const n = Array.isArray(v) ? v.length : v;
      if (typeof n === "number" && n) parts.push(`${n} ${k}`);
    }
    if (typeof result.chunks_written === "number") parts.push(`${result.chunks_written} chunks`);
    if (typeof result.seconds === "number") parts.push(`${result.seconds.toFixed(1)} s`);
    return parts.length ? parts.join(" · ") : "done";
  }

  // ---------- evals ----------
  async function loadEvals() {
    renderError($("evals-error"), null);
    let data;
    try {
      data = await busy($("view-evals"), api("GET", "/v1/evals/runs?limit=200"));
    } catch (err) {
      if (err.status !== 401) renderError($("evals-error"), err);
      return;
    }
    state.evals = (data && data.runs) || [];
    const names = new Set();
    for (const r of state.evals) for (const k of Object.keys(r.metrics || {})) names.add(k);
    const all = [...names].sort((a, b) => rankMetric(a) - rankMetric(b) || a.localeCompare(b));
    const select = $("evals-metric");
    const prev = select.value;
    select.replaceChildren(...all.map((m) => el("option", {value: m}, m)));
    if (all.includes(prev)) select.value = prev;
    const headline = all.filter((m) => HEADLINE_METRICS.includes(m)).slice(0, 4);
    if (!headline.length) headline.push(...all.slice(0, 3));
    renderEvalTable(headline);
    renderEvalChart();
  }

  function rankMetric(m) {
    const i = HEADLINE_METRICS.indexOf(m);
    return i < 0 ? 100 : i;
  }

  function renderEvalTable(headline) {
    const head = $("evals-head");
    head.replaceChildren(el("tr", {},
      ["Run", "Kind", "Dataset", "Split", "Tag", "Config", "Date"].map((h) => el("th", {scope: "col"}, h)),
      headline.map((m) => el("th", {scope: "col", class: "num"}, m))));
    const runs = [...state.evals].sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
    $("evals-body").replaceChildren(...runs.map((r) => el("tr", {testid: "eval-row", "data-id": r.id},
      el("td", {class: "mono small", title: String(r.id)}, String(r.id).slice(0, 12)),
      el("td", {}, r.kind || ""),
      el("td", {}, r.dataset || ""),
      el("td", {}, r.split || ""),
      el("td", {}, r.tag || ""),
      el("td", {class: "mono small", title: r.fingerprint_hash ? `fingerprint ${r.fingerprint_hash}` : null},
        String(r.fingerprint_hash || "").slice(0, 8)),
      el("td", {class: "small nowrap"}, fmtDate(r.created_at)),
      headline.map((m) => el("td", {class: "num mono"}, fmtMetric((r.metrics || {})[m]))))));
    show($("evals-empty"), runs.length === 0);
  }

  const PALETTE = ["#2563eb", "#d97706", "#059669", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d"];
  const pad2 = (n) => String(n).padStart(2, "0");

  /** The width a chart is drawn at: its box's, so that 11 px labels stay 11 px on a phone as on a desktop. */
  function chartWidth(box) {
    const w = Math.floor(box.getBoundingClientRect().width);
    return w > 0 ? Math.max(w, 240) : 760;
  }

  /** Eval runs that carry `metric`, as series: one per kind × dataset × split × configuration (the run's
   * fingerprint, else its tag), so that runs of two configurations are never joined into one line. */
  function evalSeries(runs, metric) {
    const byKey = new Map();
    for (const r of runs) {
      const v = Number((r.metrics || {})[metric]);
      const t = Date.parse(r.created_at);
      if (!Number.isFinite(v) || !Number.isFinite(t)) continue;
      const config = r.fingerprint_hash ? `fp:${r.fingerprint_hash}` : `tag:${r.tag || ""}`;
      const key = [r.kind || "", r.dataset || "", r.split || "", config].join("|");
      if (!byKey.has(key)) {
        byKey.set(key, {key, kind: r.kind || "", dataset: r.dataset || "(no dataset)", split: r.split || "",
          fingerprint: r.fingerprint_hash || "", tags: new Set(), points: []});
      }
      const s = byKey.get(key);
      if (r.tag) s.tags.add(r.tag);
      s.points.push({t, v, run: r});
    }
    const list = [...byKey.values()];
    const several = (f) => new Set(list.map(f)).size > 1;
    const showKind = several((s) => s.kind);
    const showSplit = several((s) => s.split);
    for (const s of list) {
      s.points.sort((a, b) => a.t - b.t);
      const config = s.tags.size === 1 ? [...s.tags][0] : s.fingerprint ? `config ${s.fingerprint.slice(0, 8)}` : "untagged";
      s.label = [showKind ? s.kind : null, showSplit ? `${s.dataset}/${s.split}` : s.dataset, config]
        .filter(Boolean).join(" · ");
    }
    // One tag on two configurations: their fingerprints tell the two lines apart.
    const seen = new Map();
    for (const s of list) seen.set(s.label, (seen.get(s.label) || 0) + 1);
    for (const s of list) if (seen.get(s.label) > 1 && s.fingerprint) s.label += ` · ${s.fingerprint.slice(0, 8)}`;
    return list.sort((a, b) => a.label.localeCompare(b.label));
  }

  function renderEvalChart() {
    const box = $("evals-chart");
    box.replaceChildren();
    const metric = $("evals-metric").value;
    const series = metric ? evalSeries(state.evals, metric) : [];
    if (!series.length) {
      box.append(el("p", {class: "empty muted"}, "No runs with this metric yet."));
      return;
    }
    // x: the runs in time order, one slot per minute in which runs finished, labelled with day and time so
    // that runs of one day are told apart (a time scale would pile a day's runs onto one point).
    const all = series.flatMap((s) => s.points).sort((a, b) => a.t - b.t);
    const years = new Set(all.map((p) => new Date(p.t).getFullYear()));
    const slots = [];
    const slotOf = new Map();
    for (const p of all) {
      const d = new Date(p.t);
      const day = `${years.size > 1 ? `${d.getFullYear()}-` : ""}${pad2(d.getMonth() + 1)}-${pad2(d.getDate())}`;
      const label = [day, `${pad2(d.getHours())}:${pad2(d.getMinutes())}`];
      const k = label.join(" ");
      if (!slotOf.has(k)) {
        slotOf.set(k, slots.length);
        slots.push(label);
      }
      p.slot = slotOf.get(k);
    }
    let vMin = Math.min(...all.map((p) => p.v));
    let vMax = Math.max(...all.map((p) => p.v));
    const pad = (vMax - vMin) * 0.1 || Math.max(Math.abs(vMax) * 0.05, 0.01);
    vMin = Math.max(0, vMin - pad);
    vMax = vMax + pad;
    if (vMax <= 1.05 && vMax > 0.9 && vMin >= 0) vMax = Math.min(vMax, 1);

    const W = chartWidth(box);
    const H = W < 560 ? 220 : 260;
    const m = {l: 52, r: 16, t: 12, b: 42};
    const plotW = W - m.l - m.r;
    const n = slots.length;
    const inset = n > 1 ? 14 : 0;
    const x = (i) => (n > 1 ? m.l + inset + (i * (plotW - 2 * inset)) / (n - 1) : m.l + plotW / 2);
    const y = (v) => H - m.b - ((v - vMin) / (vMax - vMin || 1)) * (H - m.t - m.b);
    const title = `${metric} by run, one line per dataset and configuration`;
    const chart = svg("svg", {viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "svg-chart", role: "img",
      "aria-label": title, testid: "evals-svg"});
    chart.append(svg("title", {text: title}));
    for (let i = 0; i <= 4; i += 1) {
      const v = vMin + ((vMax - vMin) * i) / 4;
      chart.append(svg("line", {x1: m.l, x2: W - m.r, y1: y(v), y2: y(v), class: "grid"}),
        svg("text", {x: m.l - 6, y: y(v) + 4, class: "tick", "text-anchor": "end", text: v.toFixed(3)}));
    }
    // As many labels as fit (about 64 px each), always the newest run's.
    const stride = Math.ceil(n / Math.max(1, Math.floor(plotW / 64)));
    slots.forEach(([day, time], i) => {
      if ((n - 1 - i) % stride !== 0) return;
      const anchor = n > 1 && i === 0 ? "start" : n > 1 && i === n - 1 ? "end" : "middle";
      const at = anchor === "start" ? x(i) - inset : anchor === "end" ? x(i) + inset : x(i);
      chart.append(svg("text", {x: at, y: H - m.b + 16, class: "tick", "text-anchor": anchor, testid: "evals-xlabel"},
        svg("tspan", {x: at, text: day}), svg("tspan", {x: at, dy: 13, text: time})));
    });
    chart.append(svg("line", {x1: m.l, x2: m.l, y1: m.t, y2: H - m.b, class: "axis"}),
      svg("line", {x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b, class: "axis"}));
    const legend = el("ul", {class: "legend", testid: "evals-legend"});
    series.forEach((s, i) => {
      const color = PALETTE[i % PALETTE.length];
      const g = svg("g", {class: "series", "data-series": s.label, "data-dataset": s.dataset, testid: "evals-series"});
      if (s.points.length > 1) {
        g.append(svg("polyline", {points: s.points.map((p) => `${x(p.slot).toFixed(1)},${y(p.v).toFixed(1)}`).join(" "),
          fill: "none", stroke: color, "stroke-width": 2}));
      }
      for (const p of s.points) {
        g.append(svg("circle", {cx: x(p.slot).toFixed(1), cy: y(p.v).toFixed(1), r: 4, fill: color, testid: "evals-point",
          "data-run": p.run.id, "data-fingerprint": p.run.fingerprint_hash || ""},
        svg("title", {text: `${s.label} · run ${p.run.id} · ${fmtDate(p.run.created_at)} · ${metric} ${fmtMetric(p.v)}${p.run.tag ? ` · tag ${p.run.tag}` : ""}`})));
      }
      chart.append(g);
      const swatch = el("span", {class: "swatch"});
      swatch.style.backgroundColor = color; // CSSOM, not a style attribute: fine under a strict CSP
      legend.append(el("li", {title: s.fingerprint ? `fingerprint ${s.fingerprint}` : null}, swatch, s.label));
    });
    box.append(chart, legend);
  }

  /** Round up to 1, 2, 2.5 or 5 times a power of ten, so that axis ticks (max / 3 steps aside) read well. */
  function niceCeil(v) {
    if (v <= 3) return 3;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const f of [1.2, 1.5, 3, 6, 9, 12]) if (v <= f * p) return Math.ceil((f * p) / 3) * 3;
    return Math.ceil(v);
  }

  // ---------- usage ----------
  async function loadUsage() {
    renderError($("usage-error"), null);
    const days = $("usage-days").value || "30";
    let data;
    try {
      data = await busy($("view-usage"), api("GET", `/v1/usage?days=${enc(days)}`));
    } catch (err) {
      if (err.status !== 401) renderError($("usage-error"), err);
      return;
    }
    const rows = ((data && data.rows) || []).slice().sort((a, b) =>
      String(b.day).localeCompare(String(a.day)) || String(a.key_name).localeCompare(String(b.key_name)));
    $("usage-body").replaceChildren(...rows.map((r) => {
      const lat = r.latency_ms || {};
      return el("tr", {testid: "usage-row"},
        el("td", {class: "mono small nowrap"}, r.day || ""),
        r.key_name || r.key_id
          ? el("td", {title: r.key_id || "", testid: "usage-key"}, r.key_name || r.key_id)
          : el("td", {class: "muted nowrap", title: "requests that carried no valid key", testid: "usage-key"}, "(no key)"),
        el("td", {class: "num"}, fmtNum(r.requests)),
        el("td", {class: `num${Number(r.errors) > 0 ? " bad" : ""}`}, fmtNum(r.errors)),
        el("td", {class: "num"}, fmtNum(r.tokens)),
        el("td", {class: "num"}, r.cost_usd === null || r.cost_usd === undefined ? "–" : `$${Number(r.cost_usd).toFixed(4)}`),
        el("td", {class: "num"}, fmtNum(lat.p50, 1)),
        el("td", {class: "num"}, fmtNum(lat.p95, 1)),
        el("td", {class: "num"}, fmtNum(lat.p99, 1)));
    }));
    show($("usage-empty"), rows.length === 0);
    state.usage = {rows, days: Number(days)};
    renderUsageChart(rows, Number(days));
  }

  function renderUsageChart(rows, days) {
    const box = $("usage-chart");
    box.replaceChildren();
    const perDay = new Map();
    for (const r of rows) perDay.set(r.day, (perDay.get(r.day) || 0) + (Number(r.requests) || 0));
    if (!perDay.size) {
      box.append(el("p", {class: "empty muted"}, "No requests in this period."));
      return;
    }
    // Every day of the period, including quiet ones, so gaps show as gaps.
    const dayList = [];
    const last = [...perDay.keys()].sort().pop();
    const end = new Date(`${last}T00:00:00Z`);
    const today = new Date();
    const endDay = Number.isNaN(end.getTime()) ? today : new Date(Math.max(end.getTime(), Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate())));
    const n = Math.min(Math.max(days || 30, 1), 366);
    for (let i = n - 1; i >= 0; i -= 1) {
      const d = new Date(endDay.getTime() - i * 86400e3);
      dayList.push(d.toISOString().slice(0, 10));
    }
    for (const d of perDay.keys()) if (!dayList.includes(d)) dayList.push(d);
    dayList.sort();
    const max = niceCeil(Math.max(...perDay.values(), 1));
    const W = chartWidth(box);
    const H = W < 560 ? 180 : 200;
    const m = {l: 44, r: 8, t: 10, b: 26};
    const bw = (W - m.l - m.r) / dayList.length;
    const chart = svg("svg", {viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "svg-chart", role: "img",
      "aria-label": "requests per day", testid: "usage-svg"});
    chart.append(svg("title", {text: "Requests per day"}));
    const y = (v) => H - m.b - (v / max) * (H - m.t - m.b);
    for (let i = 0; i <= 3; i += 1) {
      const v = (max * i) / 3;
      chart.append(svg("line", {x1: m.l, x2: W - m.r, y1: y(v), y2: y(v), class: "grid"}),
        svg("text", {x: m.l - 6, y: y(v) + 4, class: "tick", "text-anchor": "end", text: fmtNum(v)}));
    }
    dayList.forEach((day, i) => {
      const v = perDay.get(day) || 0;
      const h = H - m.b - y(v);
      chart.append(svg("rect", {x: (m.l + i * bw + bw * 0.15).toFixed(1), y: y(v).toFixed(1),
        width: Math.max(bw * 0.7, 1).toFixed(1), height: Math.max(h, v ? 1 : 0).toFixed(1), class: "bar", testid: "usage-bar", "data-day": day},
      svg("title", {text: `${day}: ${v} requests`})));
    });
    // As many labels as fit ("10-15" is about 32 px: one every 56 px or more), always the latest day's.
    const step = Math.ceil(dayList.length / Math.max(1, Math.floor((W - m.l - m.r) / 56)));
    const lastI = dayList.length - 1;
    dayList.forEach((day, i) => {
      if ((lastI - i) % step !== 0) return;
      const end = i === lastI && dayList.length > 1; // the last label ends at the chart's edge, inside it
      chart.append(svg("text", {x: (m.l + (end ? i + 1 : i + 0.5) * bw).toFixed(1), y: H - 8, class: "tick",
        "text-anchor": end ? "end" : "middle", testid: "usage-xlabel", text: day.slice(5)}));
    });
    chart.append(svg("line", {x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b, class: "axis"}));
    box.append(chart);
  }

  // ---------- wiring ----------
  function wire() {
    $("signin-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const key = $("signin-key").value.trim();
      if (key) signIn(key);
    });
    $("signout").addEventListener("click", signOut);
    for (const b of document.querySelectorAll(".tab")) b.addEventListener("click", () => go(b.dataset.view));
    $("nav").addEventListener("keydown", (ev) => {
      if (ev.key !== "ArrowRight" && ev.key !== "ArrowLeft") return;
      const tabs = [...document.querySelectorAll(".tab")];
      const i = tabs.indexOf(document.activeElement);
      if (i < 0) return;
      const next = tabs[(i + (ev.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length];
      next.focus();
    });
    window.addEventListener("hashchange", () => {
      const v = location.hash.replace("#", "");
      if (state.me && ["chat", "library", "evals", "usage"].includes(v) && v !== state.view) go(v);
    });

    $("chat-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const q = $("chat-question").value.trim();
      if (q) ask(q);
    });
    $("chat-question").addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        $("chat-form").requestSubmit();
      }
    });
    $("chat-stop").addEventListener("click", () => state.ask && state.ask.controller.abort());
    $("thread-new").addEventListener("click", newConversation);
    $("chat-collection").addEventListener("change", () => {
      localStorage.setItem(CHAT_COLLECTION, $("chat-collection").value);
      // Each collection has its own conversation: an answer still streaming belongs to the one left.
      if (state.ask && state.ask.controller) state.ask.controller.abort();
      state.ask = null;
      setAsking(false);
      resetAnswer();
    });

    $("doc-viewer-close").addEventListener("click", () => $("doc-viewer").close());
    $("doc-viewer").addEventListener("click", (ev) => {
      if (ev.target === $("doc-viewer")) $("doc-viewer").close(); // a click on the backdrop
    });

    $("library-collection").addEventListener("change", () => {
      state.docs.offset = 0;
      loadDocuments();
    });
    $("documents-refresh").addEventListener("click", () => loadDocuments());
    $("documents-prev").addEventListener("click", () => {
      state.docs.offset = Math.max(0, state.docs.offset - state.docs.limit);
      loadDocuments();
    });
    $("documents-next").addEventListener("click", () => {
      state.docs.offset += state.docs.limit;
      loadDocuments();
    });
    $("collection-create-form").addEventListener("submit", createCollection);
    $("upload-form").addEventListener("submit", submitUpload);
    $("paste-form").addEventListener("submit", submitPaste);

    $("evals-metric").addEventListener("change", renderEvalChart);
    let redraw = 0;
    window.addEventListener("resize", () => {
      cancelAnimationFrame(redraw);
      redraw = requestAnimationFrame(() => {
        if (state.view === "evals" && state.evals.length) renderEvalChart();
        if (state.view === "usage" && state.usage) renderUsageChart(state.usage.rows, state.usage.days);
      });
    });
    $("usage-days").addEventListener("change", loadUsage);
  }

  function start() {
    wire();
    const saved = localStorage.getItem(KEY_STORAGE);
    if (saved) signIn(saved, {fromStorage: true});
    else showSignin("");
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
