/* memento view: a list of traces and the view of one trace, from the JSON blobs of this page.

   The list is virtualised: only the rows in sight are in the DOM (rows have a fixed height), so 10,000 traces draw
   as fast as 20. A trace's body (its own <script type="application/json" id="tK">, after this script) is parsed
   when it is opened: the list and the first trace show while the rest of a large page is still being read.
   The KV chart is drawn from the token counts: positions run prompt, block 1, memento 1, block 2, ... answer;
   under Memento (keep 0) block i's KV goes once memento i is written, leaving the prompt and the mementos.
   Delimiters and the chat template are not counted (and the prompt and the answer are characters / 4 where a file
   counts only blocks and mementos): `memento kv` gives the exact accounting. */
(function () {
  "use strict";
  const ROW = 52; // px: the list's row height (virtualisation relies on it)
  const SVG = "http://www.w3.org/2000/svg";
  const data = JSON.parse(document.getElementById("memento-index").textContent);
  const items = data.items;
  const byId = new Map();
  const search = items.map(function (it, k) {
    byId.set(it.id, k);
    return [it.id, it.title, it.domain, it.outcome, it.find].join(" ").toLowerCase();
  });
  const $ = function (id) { return document.getElementById(id); };
  const list = $("list"), rows = $("rows"), main = $("trace");
  let shown = items.map(function (_, k) { return k; });
  let current = -1;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function add(parent) {
    for (let i = 1; i < arguments.length; i++) if (arguments[i]) parent.appendChild(arguments[i]);
    return parent;
  }
  function fmt(x) { return x === null || x === undefined ? "–" : x.toFixed(3); }
  function scoreClass(s) { return s === undefined ? "none" : "s" + Math.max(0, Math.min(3, Math.round(s))); }
  function short(unit) { return unit.charAt(0) === "≈" ? "≈ tokens" : "tokens"; }
  function sum(xs) { return xs.reduce(function (a, b) { return a + b; }, 0); }

  /* ---- the list ---- */
  function drawRow(k, i) {
    const it = items[k];
    const row = el("div", "row" + (k === current ? " active" : ""));
    row.style.top = i * ROW + "px";
    row.dataset.k = k;
    const facts = [it.blocks + " blocks", "compression " + fmt(it.ratio)];
    if (it.domain) facts.push(it.domain);
    const sub = add(el("div", "sub"), el("span", "id", it.id), el("span", null, facts.join(" · ")));
    if (it.judge) add(sub, el("span", "badge " + it.judge, "judge " + it.judge));
    if (it.outcome) add(sub, el("span", "badge " + (it.outcome === "correct" ? "pass" : "fail"), it.outcome));
    return add(row, el("div", "title", it.title), sub);
  }
  let drawn = ""; // the rows in the DOM: redrawn only when they change, so a click is never cut in two
  function drawList(force) {
    rows.style.height = shown.length * ROW + "px";
    const first = Math.max(0, Math.floor(list.scrollTop / ROW) - 4);
    const last = Math.min(shown.length, Math.ceil((list.scrollTop + list.clientHeight) / ROW) + 4);
    if (!force && drawn === first + ":" + last) return;
    drawn = first + ":" + last;
    const frag = document.createDocumentFragment();
    for (let i = first; i < last; i++) frag.appendChild(drawRow(shown[i], i));
    rows.replaceChildren(frag);
  }
  let pending = false;
  list.addEventListener("scroll", function () {
    if (pending) return;
    pending = true;
    requestAnimationFrame(function () { pending = false; drawList(); });
  });
  rows.addEventListener("click", function (e) {
    const row = e.target.closest(".row");
    if (row) open(Number(row.dataset.k));
  });

  /* ---- search and filters (a filter shows only when some trace has its field) ---- */
  function options(field, select) {
    const values = Array.from(new Set(items.map(function (it) { return it[field]; }).filter(Boolean))).sort();
    const label = document.querySelector('[data-filter="' + field + '"]');
    if (label && !values.length) label.hidden = true;
    if (!select) return;
    values.forEach(function (v) { select.appendChild(el("option", null, v)); });
  }
  options("domain", $("f-domain"));
  options("judge", null);
  options("outcome", $("f-outcome"));
  function number(id) { const v = $(id).value; return v === "" ? null : Number(v); }
  function same(a, b) { return a.length === b.length && a.every(function (k, i) { return k === b[i]; }); }
  function filter(force) {
    const terms = $("search").value.toLowerCase().split(/\s+/).filter(Boolean);
    const domain = $("f-domain").value, judge = $("f-judge").value, outcome = $("f-outcome").value;
    const bmin = number("f-blocks-min"), bmax = number("f-blocks-max");
    const rmin = number("f-ratio-min"), rmax = number("f-ratio-max");
    const before = shown;
    shown = [];
    for (let k = 0; k < items.length; k++) {
      const it = items[k];
      if (domain && it.domain !== domain) continue;
      if (judge && it.judge !== judge) continue;
      if (outcome && it.outcome !== outcome) continue;
      if ((bmin !== null && it.blocks < bmin) || (bmax !== null && it.blocks > bmax)) continue;
      if ((rmin !== null || rmax !== null) && it.ratio === null) continue;
      if ((rmin !== null && it.ratio < rmin) || (rmax !== null && it.ratio > rmax)) continue;
      if (terms.some(function (t) { return !search[k].includes(t); })) continue;
      shown.push(k);
    }
    $("count").textContent = shown.length + " of " + items.length + " traces";
    if (force !== true && same(before, shown)) return; // e.g. a `change` on blur: the rows (and a click) stay
    list.scrollTop = 0;
    drawList(true);
  }
  let typing = 0;
  $("search").addEventListener("input", function () { clearTimeout(typing); typing = setTimeout(filter, 120); });
  $("filters").addEventListener("change", filter);

  /* ---- one trace ---- */
  function open(k) {
    if (!(k >= 0 && k < items.length)) return;
    current = k;
    drawList(true);
    history.replaceState(null, "", "#trace=" + encodeURIComponent(items[k].id));
    main.replaceChildren(el("p", "empty", "loading…"));
    whenRead(k, function (node) {
      if (current !== k) return; // another trace was opened meanwhile
      main.replaceChildren(drawTrace(items[k], JSON.parse(node.textContent)));
      main.scrollTop = 0;
      window.mementoView.traceShownMs = performance.now();
    });
  }
  // A large page is still being read when its list shows: a body is whole once the parser has gone past it.
  function whenRead(k, then) {
    const node = document.getElementById("t" + k);
    if (node && (document.readyState !== "loading" || node.nextSibling)) then(node);
    else setTimeout(function () { whenRead(k, then); }, 30);
  }

  function drawTrace(it, b) {
    const view = el("article");
    const bt = b.blocks.map(function (x) { return x.bt; }), mt = b.blocks.map(function (x) { return x.mt; });
    const ratio = sum(bt) ? sum(mt) / sum(bt) : null;
    add(view, el("h2", null, it.title), el("div", "id", it.id));
    const meta = el("dl", "meta");
    Object.keys(b.meta).forEach(function (key) { add(meta, el("dt", null, key), el("dd", null, String(b.meta[key]))); });
    if (Object.keys(b.meta).length) add(view, meta);
    add(view, el("p", "totals",
      b.blocks.length + " blocks · " + sum(bt) + " block / " + sum(mt) + " memento " + b.unit +
      " · compression " + fmt(ratio)));
    (b.notes || []).forEach(function (n) { add(view, el("p", "note", n)); });
    add(view, el("h3", null, "Prompt"));
    add(view, b.problem === null ? el("p", "empty", "(not in this file: the problem's id is " + (b.meta.problem || "?") + ")")
      : folding(el("div", "text", b.problem), b.pt + " " + short(b.ends)));
    const pairs = b.blocks.map(function (x, i) { return drawPair(x, i, short(b.unit)); });
    add(view, el("h3", null, "KV cache"), drawKV(b, pairs));
    add(view, el("h3", null, "Blocks and mementos"));
    if (b.blocks.some(function (x) { return x.cut !== undefined || x.scores; })) {
      const key = el("p", "scores", "boundary score (marks between sentences, cuts between blocks): ");
      [0, 1, 2, 3].forEach(function (s) { add(key, el("span", "bd s" + s), document.createTextNode(s + " ")); });
      add(view, key);
    }
    pairs.forEach(function (p, i) {
      add(view, p.row);
      if (i < pairs.length - 1) {
        const s = b.blocks[i].cut;
        add(view, el("div", "cut " + scoreClass(s),
          "cut after block " + (i + 1) + (s === undefined ? "" : " · boundary score " + s)));
      }
    });
    add(view, el("h3", null, "Answer"), folding(el("div", "text", b.answer || "(none)"), b.at + " " + short(b.ends)));
    return view;
  }

  function folding(text, label) {
    const box = el("div", "fold");
    const bar = el("div", "bar");
    const button = el("button", "toggle", "expand");
    text.classList.add("folded");
    button.addEventListener("click", function () {
      const folded = text.classList.toggle("folded");
      button.textContent = folded ? "expand" : "fold";
    });
    add(bar, el("span", null, label), button);
    return add(box, bar, text);
  }

  function blockText(x) {
    const text = el("div", "text");
    if (!x.sentences) { text.textContent = x.text; return text; }
    x.sentences.forEach(function (s, j) {
      text.appendChild(document.createTextNode(s));
      if (j < x.sentences.length - 1) {
        const mark = el("span", "bd " + scoreClass(x.scores ? x.scores[j] : undefined));
        if (x.scores) mark.title = "boundary score " + x.scores[j];
        text.appendChild(mark);
      }
    });
    return text;
  }

  function drawPair(x, i, unit) {
    const row = el("section", "pair");
    const block = el("div", "block");
    add(block, el("h4", null, "Block " + (i + 1)), folding(blockText(x), x.bt + " " + unit));
    const memento = el("div", "memento");
    const ratio = x.bt ? " · " + (x.mt / x.bt).toFixed(2) + "× its block" : "";
    add(memento, el("h4", null, "Memento " + (i + 1)), el("div", "bar", x.mt + " " + unit + ratio),
      el("div", "text", x.memento));
    if (x.judge) add(memento, drawJudge(x.judge));
    return { row: add(row, block, memento), block: block };
  }

  function drawJudge(verdicts) {
    const kept = verdicts.find(function (v) { return v.kept; }) || verdicts[verdicts.length - 1];
    const pass = kept.score >= data.pass;
    const box = el("div", "judge " + (pass ? "pass" : "fail"));
    add(box, el("div", "score", "judge " + kept.score + "/10 · " + (pass ? "pass" : "fail") + " (pass ≥ " + data.pass + ")"));
    if (kept.parts) {
      const dims = el("dl", "parts");
      Object.keys(kept.parts).forEach(function (d) { add(dims, el("dt", null, d), el("dd", null, String(kept.parts[d]))); });
      add(box, dims);
    }
    if (kept.feedback) add(box, el("div", "feedback", kept.feedback));
    if (verdicts.length > 1) {
      const rounds = el("details");
      add(rounds, el("summary", null, "rounds: " + verdicts.map(function (v) { return v.score; }).join(" → ")));
      verdicts.forEach(function (v, j) {
        add(rounds, el("div", "round" + (v.kept ? " kept" : ""),
          "round " + (j + 1) + ": " + v.score + "/10" + (v.kept ? " (kept)" : "") + (v.feedback ? " — " + v.feedback : "")),
          v.memento ? el("div", "text", v.memento) : null);
      });
      add(box, rounds);
    }
    return box;
  }

  /* ---- the KV sawtooth and its marker ---- */
  function drawKV(b, pairs) {
    const spans = []; // [start, block end, memento end] per block, in token positions
    let pos = b.pt;
    b.blocks.forEach(function (x) { spans.push([pos, pos + x.bt, pos + x.bt + x.mt]); pos += x.bt + x.mt; });
    const total = pos + b.at;
    function held(t) { // KV tokens held under Memento (keep 0) once position t is reached
      let kept = Math.min(t, b.pt);
      for (let i = 0; i < spans.length; i++) {
        const s = spans[i];
        if (t >= s[2]) kept += b.blocks[i].mt;
        else if (t > s[0]) return kept + (t - s[0]);
        else return kept;
      }
      return kept + Math.max(0, t - pos);
    }
    const W = 900, H = 210, L = 56, R = 12, T = 12, B = 30;
    const X = function (t) { return L + (total ? t / total : 0) * (W - L - R); };
    const Y = function (v) { return H - B - (total ? v / total : 0) * (H - B - T); };
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.setAttribute("class", "kv");
    function shape(tag, attrs, text) {
      const e = document.createElementNS(SVG, tag);
      Object.keys(attrs).forEach(function (a) { e.setAttribute(a, attrs[a]); });
      if (text !== undefined) e.textContent = text;
      svg.appendChild(e);
      return e;
    }
    const pts = [[0, 0], [b.pt, b.pt]];
    let base = b.pt;
    spans.forEach(function (s, i) {
      pts.push([s[0], base], [s[2], base + s[2] - s[0]]);
      base += b.blocks[i].mt;
      pts.push([s[2], base]);
    });
    pts.push([total, base + b.at]);
    spans.forEach(function (s, i) {
      shape("line", { x1: X(s[2]), x2: X(s[2]), y1: Y(0), y2: Y(s[2]), class: "end " + scoreClass(b.blocks[i].cut) });
    });
    shape("line", { x1: L, x2: W - R, y1: Y(0), y2: Y(0), class: "axis" });
    shape("line", { x1: L, x2: L, y1: Y(0), y2: Y(total), class: "axis" });
    shape("polyline", { points: X(0) + "," + Y(0) + " " + X(total) + "," + Y(total), class: "curve-full" });
    shape("polyline", { points: pts.map(function (p) { return X(p[0]) + "," + Y(p[1]); }).join(" "), class: "curve-memento" });
    shape("text", { x: L - 6, y: Y(total) + 4, class: "tick", "text-anchor": "end" }, String(total));
    shape("text", { x: L - 6, y: Y(0) + 4, class: "tick", "text-anchor": "end" }, "0");
    shape("text", { x: W - R, y: H - 8, class: "tick", "text-anchor": "end" }, "position (" + b.unit + ")");
    shape("text", { x: 14, y: (T + H - B) / 2, class: "tick", transform: "rotate(-90 14 " + (T + H - B) / 2 + ")",
      "text-anchor": "middle" }, "KV held");
    shape("text", { x: L + 8, y: T + 12, class: "legend-full" }, "full attention");
    shape("text", { x: L + 8, y: T + 28, class: "legend-memento" }, "Memento (keep 0): blocks evicted after their memento");
    const marker = shape("line", { x1: X(0), x2: X(0), y1: Y(0), y2: Y(total), class: "marker" });
    const dot = shape("circle", { cx: X(0), cy: Y(0), r: 4, class: "marker" });

    const box = el("div", "kvbox");
    const range = el("input");
    range.type = "range"; range.min = 0; range.max = total; range.step = 1; range.value = 0; range.id = "kv-marker";
    const readout = el("p", "readout");
    function update() {
      const t = Number(range.value);
      const done = [];
      let at = -1; // the block (or its memento) being written at t
      spans.forEach(function (s, i) {
        const gone = t >= s[2], now = t >= s[0] && t < s[2];
        pairs[i].block.classList.toggle("evicted", gone);
        pairs[i].block.classList.toggle("current", now);
        if (gone) done.push(i + 1);
        if (now) at = i;
      });
      let where, sees = "the prompt";
      if (done.length) sees += ", memento" + (done.length > 1 ? "s " + done[0] + "–" + done[done.length - 1] : " " + done[0]);
      if (at >= 0) {
        where = t < spans[at][1] ? "in block " + (at + 1) : "writing memento " + (at + 1);
        sees += " and block " + (at + 1) + (t < spans[at][1] ? " so far" : " with its memento so far");
      } else if (t < b.pt) {
        where = "in the prompt";
      } else {
        where = "in the answer";
        sees += " and the answer so far";
      }
      const h = held(t);
      marker.setAttribute("x1", X(t)); marker.setAttribute("x2", X(t));
      dot.setAttribute("cx", X(t)); dot.setAttribute("cy", Y(h));
      readout.textContent = "position " + t + " of " + total + ", " + where + ": KV holds " + h + " " + short(b.unit) +
        " with Memento vs " + t + " with full attention; the model sees " + sees + "." +
        (done.length ? " Greyed: evicted blocks." : "");
    }
    range.addEventListener("input", update);
    update();
    return add(box, svg, range, readout);
  }

  /* ---- start: the list now, then the trace of #trace=ID (or the first) as soon as its body is read ---- */
  function fromHash() {
    const m = /^#trace=(.*)$/.exec(location.hash);
    if (!m) return -1;
    const k = byId.get(decodeURIComponent(m[1]));
    return k === undefined ? -1 : k;
  }
  window.addEventListener("hashchange", function () { const k = fromHash(); if (k >= 0 && k !== current) open(k); });
  filter(true);
  window.mementoView = { listReadyMs: performance.now(), traceShownMs: null }; // ms from navigation (benchmarks)
  const k = fromHash();
  open(k >= 0 ? k : shown.length ? shown[0] : -1);
})();
