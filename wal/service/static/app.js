// The status page: plain JavaScript, no build step. The token lives in sessionStorage only.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let token = sessionStorage.getItem("atb-token") || "";
  let lastSeq = null; // the last event seq received: a reconnect resumes after it
  let socket = null;
  let lastGaps = "[]"; // /readyz's unprotected list last seen (positions refreshed on a change)
  const orders = new Map();

  function showError(text) { $("error").textContent = text || ""; }

  async function api(method, path, body) {
    const headers = { "Authorization": "Bearer " + token };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      headers["Idempotency-Key"] = crypto.randomUUID ? crypto.randomUUID() :
        String(Date.now()) + "-" + Math.random().toString(16).slice(2);
    }
    const res = await fetch(path, { method, headers, body: body && JSON.stringify(body) });
    const data = await res.json().catch(() => ({}));
    if (!res.ok) {
      const e = (data && data.error) || {};
      const err = new Error((e.code || res.status) + ": " + (e.message || res.statusText));
      err.status = res.status;
      throw err;
    }
    return data;
  }

  function cell(text) { const td = document.createElement("td"); td.textContent = text ?? ""; return td; }

  function renderOrders() {
    const body = $("orders").querySelector("tbody");
    body.textContent = "";
    const list = [...orders.values()].sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
    for (const o of list) {
      const tr = document.createElement("tr");
      tr.id = "order-" + o.id;
      tr.dataset.state = o.state;
      for (const v of [o.id, o.symbol, o.side, o.quantity, o.order_type, o.price, o.state,
                       o.filled_quantity, o.avg_fill_price]) tr.appendChild(cell(v));
      tr.children[6].className = "state";
      const td = document.createElement("td");
      if (["accepted", "partially_filled", "pending"].includes(o.state)) {
        const b = document.createElement("button");
        b.textContent = "Cancel"; b.className = "cancel";
        b.onclick = () => cancel(o.id);
        td.appendChild(b);
      }
      tr.appendChild(td);
      body.appendChild(tr);
    }
  }

  async function refreshOrder(id) {
    try { orders.set(id, await api("GET", "/api/v1/orders/" + id)); renderOrders(); }
    catch (e) { showError(e.message); }
  }

  async function refreshAll() {
    const data = await api("GET", "/api/v1/orders?limit=100");
    orders.clear();
    for (const o of data.orders) orders.set(o.id, o);
    renderOrders();
    const pos = await api("GET", "/api/v1/positions");
    const pb = $("positions").querySelector("tbody");
    pb.textContent = "";
    for (const p of pos.positions) {
      const tr = document.createElement("tr");
      for (const v of [p.symbol, p.quantity, p.avg_entry_price, p.stop_loss, p.take_profit,
                       p.stop_orders.map((s) => s.side + " @ " + s.stop_price).join(", ")])
        tr.appendChild(cell(v));
      const gaps = p.unprotected || [];
      const prot = cell(gaps.length ? "UNPROTECTED: " + gaps.map((u) => u.reason).join("; ") : "ok");
      prot.className = gaps.length ? "bad" : "good";
      tr.appendChild(prot);
      pb.appendChild(tr);
    }
    const bal = await api("GET", "/api/v1/balance");
    $("balance").textContent = bal.balance + " (" + bal.account + ")";
  }

  async function health() {
    const res = await fetch("/readyz");
    const data = await res.json();
    const st = res.ok ? data : data.error.details;
    $("ready").textContent = res.ok ? "ready" : "not ready: " + data.error.message;
    $("ready").className = res.ok ? "good" : "bad";
    $("reconciliation").textContent = st.reconciliation.state;
    $("log").textContent = st.log.failed ? "FAILED: " + st.log.failed :
      "ok, " + st.log.pending + " pending, breaker " + st.log.breaker;
    const gaps = st.unprotected || [];
    $("protection").textContent = gaps.length ? "UNPROTECTED: " +
      gaps.map((u) => u.symbol + " " + u.missing + " (" + u.reason + ")").join("; ") : "ok";
    $("protection").className = gaps.length ? "bad" : "good";
    const seen = JSON.stringify(gaps);
    if (seen !== lastGaps) {  // a position's protection changed: its row too
      lastGaps = seen;
      if (token) refreshAll().catch((e) => showError(e.message));
    }
  }

  function connect() {
    if (socket) socket.close();
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    let url = proto + "//" + location.host + "/ws/orders/events?token=" + encodeURIComponent(token);
    if (lastSeq !== null) url += "&since=" + lastSeq;
    socket = new WebSocket(url);
    socket.onopen = () => { $("stream").textContent = "open"; };
    socket.onmessage = (m) => {
      const ev = JSON.parse(m.data);
      if (ev.type === "ready") { lastSeq = Math.max(lastSeq || 0, ev.seq); $("stream").textContent = "live"; return; }
      lastSeq = Math.max(lastSeq || 0, ev.seq);
      refreshOrder(ev.client_order_id);
      if (ev.kind === "fill") refreshAll().catch((e) => showError(e.message));
    };
    socket.onclose = (c) => {
      $("stream").textContent = "closed (" + (c.reason || c.code) + ")";
      if (c.code === 4422) {
        // our seq is not this journal's (a service started on another database): start
        // over from the journal's present, with everything read again
        lastSeq = null;
        refreshAll().catch((e) => showError(e.message));
      }
      if (c.code !== 4401 && token) setTimeout(connect, 1000); // resume after lastSeq
    };
  }

  async function login(t) {
    token = t;
    try {
      const who = await api("GET", "/api/v1/whoami");
      sessionStorage.setItem("atb-token", token);
      $("trader").textContent = who.trader_id;
      showError("");
      await refreshAll();
      connect();
    } catch (e) { $("trader").textContent = "(not logged in)"; showError(e.message); }
  }

  async function cancel(id) {
    try { orders.set(id, await api("POST", "/api/v1/orders/" + id + "/cancel")); renderOrders(); showError(""); }
    catch (e) { showError(e.message); }
  }

  $("login").onsubmit = (e) => { e.preventDefault(); login($("token").value.trim()); };
  $("submit").onsubmit = async (e) => {
    e.preventDefault();
    const body = { symbol: $("symbol").value.trim(), side: $("side").value,
                   quantity: $("quantity").value.trim(), order_type: $("order_type").value };
    for (const f of ["price", "stop_loss", "take_profit"]) if ($(f).value.trim()) body[f] = $(f).value.trim();
    try { const o = await api("POST", "/api/v1/orders", body); orders.set(o.id, o); renderOrders(); showError(""); }
    catch (err) { showError(err.message); }
  };
  $("lookup").onsubmit = async (e) => {
    e.preventDefault();
    try {
      const o = await api("GET", "/api/v1/orders/" + $("lookup-id").value.trim());
      $("lookup-result").textContent = o.symbol + " " + o.side + " " + o.quantity + ": " + o.state;
      showError("");
    } catch (err) { $("lookup-result").textContent = ""; showError(err.message); }
  };
  setInterval(() => health().catch(() => { $("ready").textContent = "unreachable"; }), 2000);
  health().catch(() => {});
  if (token) login(token);
})();
