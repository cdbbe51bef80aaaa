"""The page's stylesheet (screen and print) and its one script (the judged-item browser).

The script reads the items from ``<script type="application/json" id="report-data">`` and
never puts data into markup: every text goes through ``textContent``. It keeps the view in
the address (``#judged?set=...&cmp=...&verdict=loss&page=2``, ``&item=ID`` for one item), so
a view or an item is a permalink, and measures each filter-and-draw with
``performance.now()`` (shown, and kept in ``window.__report`` for tests).
"""

CSS = r"""
:root { --fg:#1b1f24; --muted:#57606a; --line:#d0d7de; --bg:#fff; --soft:#f6f8fa;
  --win:#1a7f37; --tie:#6e7781; --loss:#cf222e; --odd:#9a6700; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg); background:var(--bg); }
header, main { max-width:1280px; margin:0 auto; padding:0 20px; }
header { border-bottom:1px solid var(--line); padding-bottom:8px; }
h1 { font-size:1.6em; margin:18px 0 4px; }
h2 { font-size:1.35em; border-bottom:2px solid var(--line); padding-bottom:4px; margin-top:36px; }
h3 { font-size:1.12em; margin:26px 0 8px; }
.h4 { font-weight:600; }
.meta, .note, .made-by, figcaption, caption { color:var(--muted); }
nav ol { display:flex; flex-wrap:wrap; gap:4px 22px; list-style:none; padding:0; margin:6px 0; }
a { color:#0969da; }
.skip { position:absolute; left:-9999px; }
.skip:focus { left:8px; top:8px; background:#fff; padding:4px 8px; z-index:10; }
code, pre { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:.88em; }
pre { background:var(--soft); border:1px solid var(--line); padding:8px 10px; overflow-x:auto; white-space:pre-wrap; word-break:break-all; }
figure { margin:14px 0 22px; }
figure img { max-width:min(100%, 760px); height:auto; border:1px solid var(--line); background:#fff; }
figcaption { font-size:.9em; margin-top:4px; }
.made-by { display:block; font-size:.85em; }
.panels { display:flex; flex-wrap:wrap; gap:12px; }
.panel p { margin:0; font-size:.85em; color:var(--muted); }
.chart .tick, .chart .legend { font-size:11px; fill:#333; }
.chart .axis { font-size:11px; fill:#57606a; }
.scroll { overflow-x:auto; margin:10px 0 18px; }
table.data { border-collapse:collapse; font-size:.9em; }
table.data caption { caption-side:top; text-align:left; font-weight:600; padding-bottom:4px; }
table.data th, table.data td { border:1px solid var(--line); padding:3px 8px; text-align:left; vertical-align:top; }
table.data thead th { background:var(--soft); position:sticky; top:0; }
table.compact { font-size:.82em; }
table.compact td, table.compact th { white-space:nowrap; }
.tnote { color:var(--muted); font-size:.88em; margin:14px 0 2px; max-width:1100px; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
table.sortable thead th { cursor:pointer; }
table.sortable thead th[aria-sort=ascending]::after { content:" ▲"; }
table.sortable thead th[aria-sort=descending]::after { content:" ▼"; }
.pivot td.cell strong { font-size:1.05em; }
.pivot .ci { display:block; font-size:.85em; color:#333; }
.pivot .wtl { display:block; font-size:.78em; color:var(--muted); }
details { margin:8px 0; }
details > summary { cursor:pointer; }
details.run { border:1px solid var(--line); border-radius:6px; padding:4px 12px; }
.warn { background:#fff8c5; border:1px solid #d4a72c; padding:6px 10px; }
.controls { display:flex; flex-wrap:wrap; gap:8px 16px; align-items:end; background:var(--soft);
  border:1px solid var(--line); padding:10px; border-radius:6px; position:sticky; top:0; z-index:5; }
.controls label { display:flex; flex-direction:column; font-size:.82em; color:var(--muted); }
.controls select, .controls input { font:inherit; font-size:1.05em; color:var(--fg); max-width:420px; padding:2px 4px; }
.counts { margin:10px 0 0; font-size:.9em; }
.counts span { margin-right:14px; }
.status { color:var(--muted); font-size:.88em; margin:4px 0; }
.pages { display:flex; flex-wrap:wrap; gap:4px; margin:8px 0; }
.pages button { font:inherit; font-size:.88em; border:1px solid var(--line); background:#fff; border-radius:4px; padding:2px 9px; cursor:pointer; }
.pages button[aria-current=page] { background:#0969da; color:#fff; border-color:#0969da; }
.pages button:disabled { opacity:.4; cursor:default; }
.item { border:1px solid var(--line); border-left:6px solid var(--tie); border-radius:6px; margin:14px 0; padding:8px 14px; break-inside:avoid; }
.item { content-visibility:auto; contain-intrinsic-size:auto 420px; }
.item.v-win { border-left-color:var(--win); } .item.v-loss { border-left-color:var(--loss); }
.item.v-unparsed, .item.v-void { border-left-color:var(--odd); }
.item.target { box-shadow:0 0 0 3px #54aeff; }
.item h3 { display:inline; font-size:1em; margin:0 8px 0 0; }
.item h4 { font-size:.85em; margin:10px 0 2px; color:var(--muted); }
.badge { display:inline-block; font-size:.78em; font-weight:600; border-radius:10px; padding:0 8px; margin-right:6px; color:#fff; background:var(--tie); }
.badge.win { background:var(--win); } .badge.loss { background:var(--loss); }
.badge.unparsed, .badge.void, .badge.incons { background:var(--odd); }
.badge.cat { background:#ddf4ff; color:#0550ae; font-weight:500; }
.permalink { font-size:.82em; float:right; }
.item .meta { font-size:.82em; }
.text { white-space:pre-wrap; word-wrap:break-word; background:var(--soft); border:1px solid var(--line); border-radius:4px; padding:6px 8px; max-height:26em; overflow:auto; }
.pair { display:grid; grid-template-columns:1fr 1fr; gap:12px; }
.scores { font-size:.88em; margin:2px 0; }
.fold { margin:8px 0 2px; }
@media (max-width:800px) { .pair { grid-template-columns:1fr; } }
@media print {
  body { font-size:10.5pt; }
  header, main { max-width:none; padding:0; }
  nav, .skip, .controls, .pages, .permalink { display:none !important; }
  h2 { break-before:page; border-bottom-color:#999; }
  section:first-of-type h2 { break-before:auto; }
  h2, h3, h4 { break-after:avoid; }
  figure, tr, .item, .panel { break-inside:avoid; }
  thead { display:table-header-group; }
  table.data thead th { position:static; }
  .scroll { overflow:visible; }
  .text { max-height:none; overflow:visible; }
  a { color:inherit; text-decoration:none; }
  .item { border-left-width:4px; content-visibility:visible; }
  .pivot td.cell { -webkit-print-color-adjust:exact; print-color-adjust:exact; }
}
"""

JS = r"""
(function () {
"use strict";
var t0 = performance.now();
var D = JSON.parse(document.getElementById("report-data").textContent);
var S = D.strings, C = D.comparisons, I = D.items, V = D.verdicts, F = {};
D.item_fields.forEach(function (f, i) { F[f] = i; });
var R = window.__report = { loadMs: null, lastMs: null, renders: 0, shown: 0, matching: 0, state: null };

function $(id) { return document.getElementById(id); }
function el(tag, cls, text) {
  var n = document.createElement(tag);
  if (cls) n.className = cls;
  if (text !== undefined && text !== null) n.textContent = String(text);
  return n;
}
function signed(x, d) { return (x > 0 ? "+" : x < 0 ? "−" : "±") + Math.abs(x).toFixed(d); }

/* ---------------------------------------------------------- sortable tables */
function cellKey(td) {
  var v = td.getAttribute("data-value"), t = v !== null ? v : td.textContent;
  var x = parseFloat(String(t).replace("−", "-"));
  return isNaN(x) ? String(t).toLowerCase() : x;
}
Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
  var ths = table.tHead ? table.tHead.rows[0].cells : [];
  Array.prototype.forEach.call(ths, function (th, col) {
    th.tabIndex = 0;
    th.title = "sort by this column";
    function sort() {
      var asc = th.getAttribute("aria-sort") !== "ascending";
      Array.prototype.forEach.call(ths, function (o) { o.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = cellKey(a.cells[col]), y = cellKey(b.cells[col]);
        if (typeof x !== typeof y) { x = String(x); y = String(y); }
        return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    }
    th.addEventListener("click", sort);
    th.addEventListener("keydown", function (ev) { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); sort(); } });
  });
});
window.addEventListener("beforeprint", function () {
  Array.prototype.forEach.call(document.querySelectorAll("details"), function (d) { d.open = true; });
});

if (!I.length || !$("j-list")) { R.loadMs = performance.now() - t0; return; }

/* ---------------------------------------------------------- the judged-item browser */
var ctl = { set: $("f-set"), cmp: $("f-cmp"), verdict: $("f-verdict"), cat: $("f-cat"),
            q: $("f-q"), sort: $("f-sort"), size: $("f-size") };
var sets = [];
C.forEach(function (c) { if (sets.indexOf(c.set) < 0) sets.push(c.set); });
var state = { set: sets[0], cmp: "", verdict: "", cat: "", q: "", sort: "file", page: 1, size: 25, item: "" };
var haystack = new Array(I.length);
var catIndex = {};  /* "key=value" -> string index */

function cmpName(c) {
  return c.ordering + " stage " + c.stage + "/" + c.n_stages + " (" + c.candidate + ") vs " + c.baseline;
}
function option(sel, value, text) { var o = el("option", null, text); o.value = value; sel.appendChild(o); }
function fillSets() {
  sets.forEach(function (s) {
    var n = 0; C.forEach(function (c) { if (c.set === s) n += c.items; });
    option(ctl.set, s, s + " (" + n + " items)");
  });
}
function fillCmps() {
  ctl.cmp.textContent = "";
  C.forEach(function (c) { if (c.set === state.set) option(ctl.cmp, c.label, cmpName(c)); });
  option(ctl.cmp, "*", "every comparison on this set");
  if (!state.cmp || (state.cmp !== "*" && !C.some(function (c) { return c.set === state.set && c.label === state.cmp; }))) {
    /* by default a run's final weights against the baseline */
    var last = C.filter(function (c) { return c.set === state.set && String(c.stage) === String(c.n_stages); })[0];
    state.cmp = last ? last.label : ctl.cmp.options[0].value;
  }
  ctl.cmp.value = state.cmp;
}
function allowed() {
  var ok = new Uint8Array(C.length);
  C.forEach(function (c, k) { ok[k] = c.set === state.set && (state.cmp === "*" || c.label === state.cmp) ? 1 : 0; });
  return ok;
}
function fillCats(ok) {
  var seen = {};
  for (var i = 0; i < I.length; i++) {
    if (!ok[I[i][F.comparison]]) continue;
    var cs = I[i][F.categories];
    for (var j = 0; j < cs.length; j++) seen[S[cs[j]]] = cs[j];
  }
  catIndex = seen;
  ctl.cat.textContent = "";
  option(ctl.cat, "", "all");
  Object.keys(seen).sort(function (a, b) { return a.localeCompare(b, undefined, { numeric: true }); })
    .forEach(function (k) { option(ctl.cat, k, k); });
  if (state.cat && !(state.cat in seen)) state.cat = "";
  ctl.cat.value = state.cat;
}
function text(i) {
  var h = haystack[i];
  if (h === undefined) {
    var it = I[i];
    h = haystack[i] = (it[F.id] + "\n" + S[it[F.question]] + "\n" + S[it[F.answer_a]] + "\n" + S[it[F.answer_b]]).toLowerCase();
  }
  return h;
}
function matching(ok) {
  var out = [], v = state.verdict, want = v ? V.indexOf(v) : -1, q = state.q.toLowerCase();
  var cat = state.cat ? catIndex[state.cat] : -1, unparsed = V.indexOf("unparsed"), voidv = V.indexOf("void");
  for (var i = 0; i < I.length; i++) {
    var it = I[i];
    if (!ok[it[F.comparison]]) continue;
    if (state.item) { if (it[F.id] === state.item) out.push(i); continue; }
    if (v === "inconsistent") { if (it[F.consistent] !== 0) continue; }
    else if (v === "unparsed") { if (it[F.verdict] !== unparsed && it[F.verdict] !== voidv) continue; }
    else if (v && it[F.verdict] !== want) continue;
    if (cat >= 0 && it[F.categories].indexOf(cat) < 0) continue;
    if (q && text(i).indexOf(q) < 0) continue;
    out.push(i);
  }
  var d = function (i) { return I[i][F.words_a] - I[i][F.words_b]; };
  if (state.sort === "ldiff-desc") out.sort(function (a, b) { return d(b) - d(a) || a - b; });
  else if (state.sort === "ldiff-asc") out.sort(function (a, b) { return d(a) - d(b) || a - b; });
  else if (state.sort === "labs-desc") out.sort(function (a, b) { return Math.abs(d(b)) - Math.abs(d(a)) || a - b; });
  return out;
}

function link(extra) {
  var p = new URLSearchParams();
  p.set("set", state.set);
  p.set("cmp", extra && extra.cmp ? extra.cmp : state.cmp);
  ["verdict", "cat", "q"].forEach(function (k) { if (state[k]) p.set(k, state[k]); });
  if (state.sort !== "file") p.set("sort", state.sort);
  if (state.size !== 25) p.set("size", String(state.size));
  if (extra && "item" in extra) { if (extra.item) p.set("item", extra.item); }
  else {
    if (state.page > 1) p.set("page", String(state.page));
    if (state.item) p.set("item", state.item);
  }
  return "#judged?" + p.toString();
}
function readHash() {
  var h = location.hash;
  if (h.indexOf("#judged?") !== 0) return false;
  var p = new URLSearchParams(h.slice(8));
  state.set = sets.indexOf(p.get("set")) >= 0 ? p.get("set") : sets[0];
  state.cmp = p.get("cmp") || "";
  state.verdict = p.get("verdict") || "";
  state.cat = p.get("cat") || "";
  state.q = p.get("q") || "";
  state.sort = p.get("sort") || "file";
  state.size = parseInt(p.get("size") || "25", 10) || 25;
  state.page = Math.max(1, parseInt(p.get("page") || "1", 10) || 1);
  state.item = p.get("item") || "";
  return true;
}
function writeHash() {
  var h = link();
  if (location.hash === h) return;
  try { history.replaceState(null, "", h); } catch (err) { /* some viewers forbid it: the view still works */ }
}

function scoreLine(scores, firstIsA) {
  if (!scores) return "scores: not parsed";
  var a = firstIsA ? scores[0] : scores[1], b = firstIsA ? scores[1] : scores[0];
  var shownFirst = firstIsA ? "A " + scores[0] + ", B " + scores[1] : "B " + scores[0] + ", A " + scores[1];
  var says = a > b ? "A better" : a < b ? "B better" : "tie";
  return "scores as shown: " + shownFirst + " → " + says;
}
function side(title, body, words) {
  var s = el("div", "side");
  s.appendChild(el("h4", null, title + (words !== undefined ? " · " + words + (words === 1 ? " word" : " words") : "")));
  s.appendChild(el("div", "text", body));
  return s;
}
function review(title, scores, firstIsA, body) {
  var s = el("div", "side");
  s.appendChild(el("h4", null, title));
  s.appendChild(el("p", "scores", scoreLine(scores, firstIsA)));
  s.appendChild(el("div", "text review", body));
  return s;
}
function card(i) {
  var it = I[i], c = C[it[F.comparison]], v = V[it[F.verdict]];
  var a = el("article", "item v-" + v);
  a.id = "item-" + it[F.comparison] + "-" + it[F.id];
  a.setAttribute("data-verdict", v);
  a.setAttribute("data-id", it[F.id]);
  a.setAttribute("data-consistent", it[F.consistent] === null ? "" : String(it[F.consistent]));
  var head = el("div", "head");
  head.appendChild(el("h3", null, "Item " + it[F.id]));
  head.appendChild(el("span", "badge " + v, v));
  if (it[F.consistent] === 0) head.appendChild(el("span", "badge incons", "position-inconsistent"));
  it[F.categories].forEach(function (k) { head.appendChild(el("span", "badge cat", S[k])); });
  var pl = el("a", "permalink", "permalink");
  pl.href = link({ item: it[F.id], cmp: c.label });
  pl.setAttribute("aria-label", "permalink to item " + it[F.id]);
  head.appendChild(pl);
  a.appendChild(head);
  var dw = it[F.words_a] - it[F.words_b];
  a.appendChild(el("p", "meta", c.set + " · " + cmpName(c) + " · length A − B: " + (dw > 0 ? "+" : "") + dw + " words"));
  a.appendChild(el("h4", null, "Question"));
  a.appendChild(el("div", "text question", S[it[F.question]]));
  var pair = el("div", "pair");
  pair.appendChild(side("A: " + c.candidate, S[it[F.answer_a]], it[F.words_a]));
  pair.appendChild(side("B: " + c.baseline, S[it[F.answer_b]], it[F.words_b]));
  a.appendChild(pair);
  var rv = el("div", "pair");
  rv.appendChild(review("Review 1: A shown first", it[F.scores_ab], true, S[it[F.review_ab]]));
  rv.appendChild(review("Review 2: B shown first", it[F.scores_ba], false, S[it[F.review_ba]]));
  a.appendChild(rv);
  var fold = el("p", "fold");
  fold.appendChild(document.createTextNode("Folded under the " + D.rule + " rule: "));
  fold.appendChild(el("strong", null, v === "void" ? "void (a score ≤ 0: kept in N, adds nothing)" : v === "unparsed" ? "left out (a review did not parse)" : v + " for A"));
  if (it[F.error] >= 0) fold.appendChild(el("span", "note", " · " + S[it[F.error]]));
  a.appendChild(fold);
  return a;
}

function pager(nav, pages) {
  nav.textContent = "";
  if (pages <= 1) return;
  function btn(label, page, current) {
    var b = el("button", null, label);
    b.type = "button";
    if (current) b.setAttribute("aria-current", "page");
    if (page < 1 || page > pages) b.disabled = true;
    b.addEventListener("click", function () { state.page = page; update(true); });
    nav.appendChild(b);
  }
  btn("‹ previous", state.page - 1);
  var shown = {}, list = [1, 2, state.page - 2, state.page - 1, state.page, state.page + 1, state.page + 2, pages - 1, pages];
  var last = 0;
  list.sort(function (x, y) { return x - y; }).forEach(function (p) {
    if (p < 1 || p > pages || shown[p]) return;
    if (p > last + 1) nav.appendChild(el("span", null, "…"));
    shown[p] = 1; last = p;
    btn(String(p), p, p === state.page);
  });
  btn("next ›", state.page + 1);
}
function counts(ok) {
  var box = $("j-summary");
  box.textContent = "";
  var n = [0, 0, 0, 0, 0], incons = 0;
  for (var i = 0; i < I.length; i++) {
    var it = I[i];
    if (!ok[it[F.comparison]]) continue;
    n[it[F.verdict]]++;
    if (it[F.consistent] === 0) incons++;
  }
  var total = n[0] + n[1] + n[2];
  box.appendChild(el("strong", null, state.cmp === "*" ? "All comparisons on this set: " : "This comparison: "));
  ["win", "tie", "loss"].forEach(function (k, j) { box.appendChild(el("span", "badge " + k, k + " " + n[j])); });
  box.appendChild(el("span", "badge incons", "position-inconsistent " + incons));
  if (n[3] + n[4]) box.appendChild(el("span", "badge unparsed", "unparsed / void " + (n[3] + n[4])));
  if (total) box.appendChild(el("span", null, "win rate " + signed(100 * (n[0] + n[1] / 2) / (total + (D.rule === "authors" ? n[4] : 0)) - 50, 1)));
}

function update(scroll) {
  var t = performance.now();
  var ok = allowed();
  var hits = matching(ok);
  var pages = Math.max(1, Math.ceil(hits.length / state.size));
  if (state.page > pages) state.page = pages;
  var list = $("j-list");
  var frag = document.createDocumentFragment();
  var from = (state.page - 1) * state.size;
  hits.slice(from, from + state.size).forEach(function (i) { frag.appendChild(card(i)); });
  list.textContent = "";
  list.appendChild(frag);
  pager($("j-pages"), pages);
  pager($("j-pages-top"), pages);
  counts(ok);
  void list.offsetHeight;  /* style and layout included in the measurement */
  var ms = performance.now() - t;
  R.lastMs = ms; R.renders++; R.shown = list.children.length; R.matching = hits.length;
  R.state = JSON.parse(JSON.stringify(state));
  var status = hits.length + " item" + (hits.length === 1 ? "" : "s") + " match";
  if (state.item) status = "one item (permalink)";
  $("j-status").textContent = status + " · page " + state.page + " of " + pages +
    " · filtered and drawn in " + ms.toFixed(1) + " ms";
  if (state.item) {
    var back = el("a", null, " show all items of this comparison");
    back.href = link({ item: "" });
    $("j-status").appendChild(back);
  }
  writeHash();
  if (scroll) {
    var target = state.item && list.firstChild ? list.firstChild : $("j-controls");
    if (state.item && target) target.classList.add("target");
    target.scrollIntoView();
  }
}
function fromControls(what) {
  state.set = ctl.set.value;
  if (what === "set") { state.cmp = ""; fillCmps(); }
  state.cmp = ctl.cmp.value;
  if (what === "set" || what === "cmp") { state.cat = ""; fillCats(allowed()); }
  state.verdict = ctl.verdict.value;
  state.cat = ctl.cat.value;
  state.q = ctl.q.value.trim();
  state.sort = ctl.sort.value;
  state.size = parseInt(ctl.size.value, 10) || 25;
  state.page = 1;
  state.item = "";
  update(false);
}
function toControls() {
  ctl.set.value = state.set;
  fillCmps();
  fillCats(allowed());
  ctl.verdict.value = state.verdict;
  ctl.q.value = state.q;
  ctl.sort.value = state.sort;
  if (!Array.prototype.some.call(ctl.size.options, function (o) { return o.value === String(state.size); })) {
    option(ctl.size, String(state.size), String(state.size));
  }
  ctl.size.value = String(state.size);
}

fillSets();
var fromLink = readHash();
toControls();
["set", "cmp", "verdict", "cat", "sort", "size"].forEach(function (k) {
  ctl[k].addEventListener("change", function () { fromControls(k); });
});
var typing = null;
ctl.q.addEventListener("input", function () { clearTimeout(typing); typing = setTimeout(function () { fromControls("q"); }, 150); });
$("j-controls").addEventListener("submit", function (ev) { ev.preventDefault(); fromControls("q"); });
window.addEventListener("hashchange", function () { if (readHash()) { toControls(); update(true); } });
update(fromLink);
R.loadMs = performance.now() - t0;
})();
"""
