"""The HTML, CSS and JavaScript of the error-analysis pages (:mod:`hlm12erc.pages` fills them in).

A module rather than a package data file, so the pages stage's code deps stay its import graph.
One page is one file: the data is a JSON blob in a ``<script type="application/json">`` that the
inline script renders, so the page opens from ``file://`` and inside MLflow's artifact view (a
sandboxed blob URL, where nothing relative resolves). No CDN, no fetch.
"""

HEAD = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
"""
END = "</script>\n</body>\n</html>\n"

PAGE = HEAD + r"""<style>
:root{--err:#c62828;--ok:#2e7d32;--bg:#f4f5f7;--line:#dcdfe4;--muted:#667085}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
  background:var(--bg);color:#1d2433}
header{background:#fff;border-bottom:1px solid var(--line);padding:14px 22px 10px}
h1{font-size:19px;margin:0 0 4px}
.stats{display:flex;flex-wrap:wrap;gap:4px 18px;color:#344054}
.stats b{color:#101828}
.notes{margin:8px 0 0;padding:6px 10px;background:#fff8e1;border:1px solid #f2d37b;border-radius:6px;font-size:12.5px}
.notes div+div{margin-top:2px}
.panels{display:flex;flex-wrap:wrap;gap:18px 36px;margin-top:10px}
.panel h2{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted);margin:0 0 4px}
.f1row{display:grid;grid-template-columns:70px 170px 44px 52px;align-items:center;font-size:12.5px;height:19px}
.f1bar{height:11px;background:#eef0f3;border-radius:2px;overflow:hidden}
.f1bar i{display:block;height:100%}
.f1row .v{text-align:right;font-variant-numeric:tabular-nums}
.f1row .n{text-align:right;color:var(--muted);font-size:11.5px}
table.cm{border-collapse:collapse;font-size:12px;font-variant-numeric:tabular-nums}
.cm th{font-weight:500;color:#344054;padding:1px 4px}
.cm th.r{text-align:right}
.cm th.c{writing-mode:vertical-rl;transform:rotate(180deg);height:58px;vertical-align:bottom;padding:2px 0}
.cm td{width:32px;height:22px;text-align:center;border:1px solid #fff;cursor:pointer;border-radius:3px}
.cm td:hover,.cm td.sel{outline:2px solid #1d2433;outline-offset:-2px}
#controls{position:sticky;top:0;z-index:5;background:#fff;border-bottom:1px solid var(--line);padding:7px 22px;
  display:flex;flex-wrap:wrap;gap:6px 14px;align-items:center;font-size:13px}
#controls select{font:inherit;font-size:12.5px;max-width:140px}
#controls button{font:inherit;font-size:12.5px}
#controls .end{margin-left:auto;display:flex;gap:10px;align-items:center}
#count{color:var(--muted)}
main{padding:14px 22px 40px;max-width:1180px}
.dlg{background:#fff;border:1px solid var(--line);border-radius:8px;margin:0 0 14px;padding:8px 12px 6px;
  content-visibility:auto;contain-intrinsic-size:auto 520px}
.dlg h3{font-size:13.5px;margin:0 0 4px;color:#344054;font-weight:600}
.dlg h3 .e{color:var(--err)}
.dlg h3 .ok{color:var(--ok)}
.turn{display:flex;gap:10px;padding:5px 6px;border-left:4px solid transparent;border-radius:4px;margin:2px 0}
.turn.err{border-left-color:var(--err);background:#fdeceb}
.turn.hide,.dlg.hide{display:none}
.thumb{width:96px;height:72px;object-fit:contain;background:#222;border-radius:3px;flex:none}
.nothumb{width:96px;height:72px;flex:none;border-radius:3px;background:#eceef1;color:#8a93a3;font-size:11px;
  display:flex;align-items:center;justify-content:center;text-align:center}
.tb{flex:1;min-width:0}
.who{font-weight:650;margin-right:6px}
.meta{display:flex;flex-wrap:wrap;gap:4px 8px;align-items:center;margin-top:3px;font-size:12px;color:var(--muted)}
.chip{display:inline-block;padding:0 7px;border-radius:9px;color:#fff;font-size:11.5px;line-height:18px;
  white-space:nowrap}
.chip.g{background:#fff !important;border:1.5px solid;line-height:15px;padding:0 6px}
.chip.x{box-shadow:0 0 0 2px var(--err)}
.mark{font-weight:700}
.mark.bad{color:var(--err)}
.mark.good{color:var(--ok)}
.pbar{display:inline-flex;width:150px;height:11px;border-radius:2px;overflow:hidden;background:#eef0f3;vertical-align:middle}
.pbar i{display:block;height:100%}
.st.bad{color:var(--err)}
button.play{font-size:11.5px;padding:0 7px;border:1px solid #c8ccd3;border-radius:9px;background:#fff;
  cursor:pointer;line-height:17px}
audio{height:26px;width:220px;vertical-align:middle}
.legend{display:flex;flex-wrap:wrap;gap:4px 10px;font-size:11.5px;color:var(--muted);margin-top:8px}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:3px;vertical-align:-1px}
</style>
</head>
<body>
<header id="head"></header>
<div id="controls"></div>
<main id="dialogues"></main>
<script type="application/json" id="data">__DATA__</script>
<script>
(function(){
"use strict";
var D = JSON.parse(document.getElementById("data").textContent);
var L = D.labels, NL = L.length, CH = "0123456789abcdefghijklmnopqrstuvwxyz";
var KNOWN = {anger:"#d62728",disgust:"#6b8e23",fear:"#8e5ab5",joy:"#e8a200",neutral:"#8a8f98",
             sadness:"#1f77b4",surprise:"#f06d1a"};
var SPARE = ["#17becf","#bcbd22","#e377c2","#7f7f7f","#9edae5","#393b79"];
var COL = L.map(function(l, i){ return KNOWN[l] || SPARE[i % SPARE.length]; });
function esc(s){ return String(s).replace(/[&<>"]/g, function(c){
  return {"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]; }); }
function fmt(v){ return v == null ? "–" : v.toFixed(3); }
function chip(i, cls, prefix){
  return i < 0 ? "" : '<span class="chip ' + (cls || "") + '" style="background:' + COL[i] + ';border-color:' +
    COL[i] + (cls === "g" ? ";color:" + COL[i] : "") + '">' + (prefix || "") + esc(L[i]) + "</span>"; }

var T = [];
D.dialogues.forEach(function(d, di){
  d.errors = 0;
  d.turns.forEach(function(t){ t.d = di; t.i = T.length; t.e = t.g >= 0 && t.y >= 0 && t.g !== t.y;
    if (t.e) d.errors++; T.push(t); });
});
var gold = T.some(function(t){ return t.g >= 0; });

// ---------------------------------------------------------------- header
var h = ['<h1>' + esc(D.title) + '</h1><div class="stats">'];
var M = D.metrics;
if (D.split) h.push('<span>split <b>' + esc(D.split) + '</b></span>');
h.push('<span><b>' + T.length + '</b> turns in <b>' + D.dialogues.length + '</b> dialogues</span>');
if (M) {
  h.push('<span>accuracy <b>' + fmt(M.accuracy) + '</b></span>');
  h.push('<span>weighted-F1 <b>' + fmt(M.weighted_f1) + '</b>' + (M.ci ? ' <span title="95% interval over ' +
    'dialogue bootstrap resamples">[' + fmt(M.ci[0]) + ' – ' + fmt(M.ci[1]) + ']</span>' : '') + '</span>');
  h.push('<span>macro-F1 <b>' + fmt(M.macro_f1) + '</b></span>');
}
if (D.modalities && D.modalities.length) h.push('<span>model reads <b>' + esc(D.modalities.join("+")) + '</b></span>');
h.push('<span>audio: ' + esc(D.audio) + '</span></div>');
if (D.notes && D.notes.length) h.push('<div class="notes">' + D.notes.map(function(n){
  return '<div>' + esc(n) + '</div>'; }).join("") + '</div>');
if (M) {
  h.push('<div class="panels"><div class="panel"><h2>F1 per class (support)</h2>');
  L.forEach(function(l, i){
    h.push('<div class="f1row"><span>' + esc(l) + '</span><span class="f1bar"><i style="width:' +
      (100 * M.f1[i]).toFixed(1) + '%;background:' + COL[i] + '"></i></span><span class="v">' + fmt(M.f1[i]) +
      '</span><span class="n">' + M.support[i] + '</span></div>');
  });
  h.push('</div><div class="panel"><h2>Confusion (rows gold, columns predicted; click a cell)</h2>' +
    '<table class="cm" id="cm"><tr><th></th>');
  L.forEach(function(l){ h.push('<th class="c">' + esc(l) + '</th>'); });
  h.push('</tr>');
  var top = 1;
  D.confusion.forEach(function(row){ row.forEach(function(v){ top = Math.max(top, v); }); });
  D.confusion.forEach(function(row, r){
    h.push('<tr><th class="r">' + esc(L[r]) + '</th>');
    row.forEach(function(v, c){
      var a = v ? 0.12 + 0.88 * v / top : 0, rgb = r === c ? "46,125,50" : "198,40,40";
      h.push('<td data-r="' + r + '" data-c="' + c + '" title="gold ' + esc(L[r]) + ', predicted ' + esc(L[c]) +
        ': ' + v + '" style="background:rgba(' + rgb + ',' + a.toFixed(3) + ');color:' +
        (a > 0.55 ? "#fff" : "#1d2433") + '">' + (v || "") + '</td>');
    });
    h.push('</tr>');
  });
  h.push('</table></div></div>');
}
h.push('<div class="legend">' + L.map(function(l, i){ return '<span><i style="background:' + COL[i] +
  '"></i>' + esc(l) + '</span>'; }).join("") + '<span>· bar: the ' + NL + ' probabilities · outlined chip: ' +
  'gold · filled: predicted</span></div>');
document.getElementById("head").innerHTML = h.join("");

// ---------------------------------------------------------------- controls
function options(values, names){ return '<option value="">any</option>' + values.map(function(v, k){
  return '<option value="' + esc(v) + '">' + esc(names ? names[k] : v) + '</option>'; }).join(""); }
var idx = L.map(function(_, i){ return String(i); });
var counts = {};
T.forEach(function(t){ counts[t.s] = (counts[t.s] || 0) + 1; });
var speakers = Object.keys(counts).sort(function(a, b){ return counts[b] - counts[a] || (a < b ? -1 : 1); });
var cmpNames = D.compare ? D.compare.names : [];
var c = [];
if (gold) c.push('<label><input type="checkbox" id="f-err"> errors only</label>',
  '<label>gold <select id="f-gold">' + options(idx, L) + '</select></label>');
c.push('<label>predicted <select id="f-pred">' + options(idx, L) + '</select></label>',
  '<label>speaker <select id="f-spk">' + options(speakers, speakers.map(function(s){
    return s + " (" + counts[s] + ")"; })) + '</select></label>');
if (gold) c.push('<label title="the gold emotion differs from the same speaker\'s previous turn">' +
  '<input type="checkbox" id="f-shift"> emotion shifts</label>');
if (cmpNames.length) c.push('<label>compare with <select id="f-cmp"><option value="">–</option>' +
  cmpNames.map(function(n){ return '<option>' + esc(n) + '</option>'; }).join("") + '</select></label>',
  '<label><input type="checkbox" id="f-dis"> they disagree</label>');
if (gold) c.push('<label>sort <select id="f-sort"><option value="order">dialogue order</option>' +
  '<option value="errors">most errors first</option></select></label>');
c.push('<span class="end"><button id="f-clear" type="button">clear</button><span id="count"></span></span>');
document.getElementById("controls").innerHTML = c.join("");

// ---------------------------------------------------------------- dialogues
function pbar(t){
  if (!t.p.length) return "";
  var tip = t.p.map(function(v, i){ return L[i] + " " + (v / 1000).toFixed(3); }).join(" · ");
  return '<span class="pbar" title="' + esc(tip) + '">' + t.p.map(function(v, i){
    return v ? '<i style="width:' + (v / 10).toFixed(1) + '%;background:' + COL[i] + '"></i>' : ""; }).join("") +
    "</span>";
}
function turnHtml(t){
  var img = t.img ? '<img class="thumb" loading="lazy" decoding="async" alt="centre frame of ' + esc(t.k) +
    '" src="' + t.img + '">' : '<div class="nothumb">' + (t.frame ? esc(t.frame) : "no frame") + '</div>';
  var mark = t.g < 0 || t.y < 0 ? "" : t.e ? '<span class="mark bad">✗</span>' : '<span class="mark good">✓</span>';
  var bad = t.m !== "ok";
  return '<div class="turn' + (t.e ? " err" : "") + '" data-i="' + t.i + '" data-clip="' + esc(t.k) + '">' + img +
    '<div class="tb"><div><span class="who">' + esc(t.s) + '</span><span class="txt">' + esc(t.t) + '</span></div>' +
    '<div class="meta">' + chip(t.g, "g", "gold ") + chip(t.y, t.e ? "x" : "", "") + mark + pbar(t) +
    '<span class="cmp"></span>' +
    '<span class="st' + (bad ? " bad" : "") + '" title="media status">' + esc(t.m) + '</span>' +
    '<span title="modalities the model read for this turn">' + esc(t.u) + '</span>' +
    (t.wav ? '<button class="play" type="button" data-i="' + t.i + '">▶ audio</button>' : "<span>no audio</span>") +
    '</div></div></div>';
}
var html = D.dialogues.map(function(d, di){
  var e = d.errors;
  return '<section class="dlg" data-d="' + di + '"><h3>Dialogue ' + esc(d.id) + ' · ' + d.turns.length + ' turns' +
    (gold ? ' · <span class="' + (e ? "e" : "ok") + '">' + e + ' error' + (e === 1 ? "" : "s") + '</span>' : "") +
    '</h3>' + d.turns.map(turnHtml).join("") + '</section>';
});
var main = document.getElementById("dialogues");
main.innerHTML = html.join("");
var SEC = Array.prototype.slice.call(main.children);
var EL = Array.prototype.slice.call(main.querySelectorAll(".turn"));

main.addEventListener("click", function(ev){
  var b = ev.target.closest("button.play");
  if (!b) return;
  var a = document.createElement("audio");
  a.controls = true; a.preload = "auto"; a.src = T[+b.dataset.i].wav;
  b.replaceWith(a);
  var p = a.play(); if (p && p.catch) p.catch(function(){});
});

// ---------------------------------------------------------------- filters
function $(id){ return document.getElementById(id); }
function val(id){ var e = $(id); return e ? (e.type === "checkbox" ? e.checked : e.value) : ""; }
function pick(ch){ var k = CH.indexOf(ch); return k < 0 || ch === "." ? -1 : k; }
var cell = null;
function apply(){
  var err = val("f-err"), g = val("f-gold"), y = val("f-pred"), s = val("f-spk"), sh = val("f-shift"),
      name = val("f-cmp"), dis = val("f-dis"), other = name ? D.compare.pred[name] : "";
  var seen = new Array(SEC.length).fill(0), n = 0;
  for (var k = 0; k < T.length; k++) {
    var t = T[k], o = other ? pick(other[k]) : -1;
    var show = (!err || t.e) && (g === "" || t.g === +g) && (y === "" || t.y === +y) && (s === "" || t.s === s) &&
      (!sh || t.sh === 1) && (!dis || (o >= 0 && t.y >= 0 && o !== t.y));
    EL[k].classList.toggle("hide", !show);
    if (show) { seen[t.d]++; n++; }
  }
  var nd = 0;
  SEC.forEach(function(sec, di){ sec.classList.toggle("hide", !seen[di]); if (seen[di]) nd++; });
  $("count").textContent = n + " of " + T.length + " turns in " + nd + " of " + SEC.length + " dialogues";
  document.body.dataset.shown = String(n);
}
function compare(){
  var name = val("f-cmp"), other = name ? D.compare.pred[name] : "";
  EL.forEach(function(el, k){
    var span = el.querySelector(".cmp"), o = other ? pick(other[k]) : -1, t = T[k];
    span.innerHTML = o < 0 ? "" : esc(name) + ": " + chip(o, t.g >= 0 && o !== t.g ? "x" : "", "");
  });
  if (name) location.hash = "compare=" + encodeURIComponent(name);
  apply();
}
function sort(){
  var by = val("f-sort"), order = SEC.slice();
  if (by === "errors") order.sort(function(a, b){
    return D.dialogues[+b.dataset.d].errors - D.dialogues[+a.dataset.d].errors || a.dataset.d - b.dataset.d; });
  order.forEach(function(sec){ main.appendChild(sec); });
}
["f-err", "f-gold", "f-pred", "f-spk", "f-shift", "f-dis"].forEach(function(id){
  var e = $(id); if (e) e.addEventListener("change", function(){
    if (cell && (id === "f-gold" || id === "f-pred")) { cell.classList.remove("sel"); cell = null; }
    apply(); }); });
if ($("f-cmp")) $("f-cmp").addEventListener("change", compare);
if ($("f-sort")) $("f-sort").addEventListener("change", sort);
$("f-clear").addEventListener("click", function(){
  Array.prototype.forEach.call(document.querySelectorAll("#controls select, #controls input"), function(e){
    if (e.type === "checkbox") e.checked = false; else if (e.id !== "f-cmp" && e.id !== "f-sort") e.value = ""; });
  if (cell) { cell.classList.remove("sel"); cell = null; }
  apply();
});
if ($("cm")) $("cm").addEventListener("click", function(ev){
  var td = ev.target.closest("td"); if (!td) return;
  if (cell) cell.classList.remove("sel");
  cell = td; td.classList.add("sel");
  $("f-gold").value = td.dataset.r; $("f-pred").value = td.dataset.c;
  if ($("f-err")) $("f-err").checked = false;
  apply();
  main.scrollIntoView();
});
function fromHash(){
  var m = /compare=([^&]+)/.exec(location.hash), name = m ? decodeURIComponent(m[1]) : "";
  if (name && $("f-cmp") && cmpNames.indexOf(name) >= 0 && $("f-cmp").value !== name) {
    $("f-cmp").value = name; compare(); return true; }
  return false;
}
window.addEventListener("hashchange", fromHash);
if (!fromHash()) apply();
window.__renderMs = performance.now();
document.body.dataset.ready = "1";
})();
""" + END

INDEX = HEAD + r"""<style>
body{margin:0;padding:18px 24px;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
  background:#f4f5f7;color:#1d2433}
h1{font-size:19px;margin:0 0 10px}
table{border-collapse:collapse;background:#fff;font-size:13px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #dcdfe4;padding:4px 9px;text-align:left}
th{background:#f0f2f5;font-weight:600}
td.num{text-align:right}
tr.head td:first-child{font-weight:700}
form{margin:14px 0;display:flex;gap:8px;align-items:center}
p{color:#475467;max-width:820px}
</style>
</head>
<body>
<h1>__TITLE__</h1>
<p>One page per evaluated objective: every dialogue of the split as a transcript, with gold and predicted
emotions, the probabilities, the centre frame and the audio. Compare two objectives to see the turns where
they disagree.</p>
__TABLE__
<form id="cmp" onsubmit="return false">compare <select id="a">__OPTIONS_A__</select> with
<select id="b">__OPTIONS_B__</select> <button type="submit">open</button></form>
<script>
document.getElementById("cmp").addEventListener("submit", function(){
  var a = document.getElementById("a").value, b = document.getElementById("b").value;
  location.href = encodeURIComponent(a) + "/index.html" + (a !== b ? "#compare=" + encodeURIComponent(b) : "");
});
""" + END
