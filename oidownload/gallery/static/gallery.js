// The grid of index.html: pages through the images without loading them all. Data comes
// as script files (browsers refuse fetch() of file:// URLs) that call OIG.put(name, value).
// Text is only ever set with textContent, never parsed as HTML.
"use strict";

const OIG = {
  store: new Map(),
  waiting: new Map(),
  put(name, value) {
    this.store.set(name, value);
    const w = this.waiting.get(name);
    if (w) { this.waiting.delete(name); w.resolve(value); }
  },
  load(name) {
    if (this.store.has(name)) return Promise.resolve(this.store.get(name));
    if (!this.waiting.has(name)) {
      let resolve, reject;
      const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
      this.waiting.set(name, { promise, resolve });
      const s = document.createElement("script");
      s.src = "data/" + name + ".js";
      s.onerror = () => { this.waiting.delete(name); reject(new Error("cannot load " + s.src)); };
      document.head.appendChild(s);
    }
    return this.waiting.get(name).promise;
  },
};

const SVG = "http://www.w3.org/2000/svg";

function svgEl(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

function intersect(a, b) {  // both sorted ascending
  const out = [];
  for (let i = 0, j = 0; i < a.length && j < b.length;) {
    if (a[i] === b[j]) { out.push(a[i]); i++; j++; } else if (a[i] < b[j]) i++; else j++;
  }
  return out;
}

function readState() {
  const p = new URLSearchParams(location.hash.slice(1));
  const int = (k) => (p.has(k) && /^\d+$/.test(p.get(k)) ? Number(p.get(k)) : null);
  return { cls: int("class"), split: int("split"), page: Math.max(1, int("page") || 1), word: p.get("word") || "" };
}

// narratives (issue 23): whole words, any case; a query of several words wants them all.
// Captions are only ever matched, never inserted as HTML.
const WORD = /[\p{L}\p{N}_]+/gu;

function captionTest(query) {
  const words = query.match(WORD) || [];
  if (!words.length) return null;
  const res = words.map((w) => new RegExp("(?<![\\p{L}\\p{N}_])" + w + "(?![\\p{L}\\p{N}_])", "iu"));
  return (text) => res.every((re) => re.test(text));
}

function writeState(st) {
  const p = new URLSearchParams();
  if (st.cls !== null) p.set("class", st.cls);
  if (st.split !== null) p.set("split", st.split);
  if (st.word) p.set("word", st.word);
  if (st.page > 1) p.set("page", st.page);
  const hash = p.toString();
  if (location.hash.slice(1) !== hash) location.hash = hash;
  else render();
}

function tile(meta, rec) {
  const [id, , w, h, thumb, boxes, classes] = rec;
  const dir = id.slice(0, 3);
  const fig = document.createElement("figure");
  fig.className = "tile";
  fig.dataset.imageId = id;
  const a = document.createElement("a");
  a.className = "frame-link";
  a.href = "images/" + dir + "/" + id + ".html";
  const svg = svgEl("svg", { class: "frame", viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: "xMidYMid meet" });
  if (thumb) {
    svg.appendChild(svgEl("image", { href: "images/" + dir + "/" + id + ".t.jpg", x: 0, y: 0, width: w, height: h, preserveAspectRatio: "none" }));
  } else {
    const t = svgEl("text", { x: w / 2, y: h / 2, "text-anchor": "middle", class: "nothumb", "font-size": Math.max(w, h) / 12 });
    t.textContent = "no thumbnail";
    svg.appendChild(t);
  }
  const masks = rec[7] || [];  // masks (issue 22): [class, BoxID, ...], overlays beside the page
  for (let i = 0; i < masks.length; i += 2) {
    const [c, boxId] = [masks[i], masks[i + 1]];
    const [mid, name] = meta.classes[c];
    const m = svgEl("image", { class: "mask", href: "images/" + dir + "/" + id + ".m-" + boxId + ".png", x: 0, y: 0, width: w, height: h, preserveAspectRatio: "none", "data-image-id": id, "data-label": mid, "data-box-id": boxId });
    const title = svgEl("title", {});
    title.textContent = name;
    m.appendChild(title);
    svg.appendChild(m);
  }
  for (let i = 0; i < boxes.length; i += 5) {
    const [c, x, y, bw, bh] = boxes.slice(i, i + 5);
    const [mid, name, colour] = meta.classes[c];
    const r = svgEl("rect", { class: "box", x, y, width: bw, height: bh, stroke: colour, "data-image-id": id, "data-label": mid });
    const title = svgEl("title", {});
    title.textContent = name;
    r.appendChild(title);
    svg.appendChild(r);
  }
  a.appendChild(svg);
  fig.appendChild(a);
  const cap = document.createElement("figcaption");
  const idEl = document.createElement("div");
  idEl.className = "id";
  idEl.textContent = id + " · " + meta.splits[rec[1]];
  cap.appendChild(idEl);
  const drawn = new Map();  // class -> boxes drawn
  for (let i = 0; i < boxes.length; i += 5) drawn.set(boxes[i], (drawn.get(boxes[i]) || 0) + 1);
  for (const [c, n] of drawn) {
    const chip = document.createElement("span");
    chip.className = "chip";
    chip.style.borderLeftColor = meta.classes[c][2];
    chip.dataset.label = meta.classes[c][0];
    chip.textContent = n > 1 ? `${meta.classes[c][1]} ×${n}` : meta.classes[c][1];
    cap.appendChild(chip);
  }
  const also = classes.filter((c) => !drawn.has(c)).map((c) => meta.classes[c][1]);
  if (also.length) {  // image-level labels without a box
    const el = document.createElement("div");
    el.className = "also";
    el.textContent = also.join(", ");
    el.title = also.join(", ");
    cap.appendChild(el);
  }
  fig.appendChild(cap);
  return fig;
}

let renderCount = 0;

async function render() {
  const ticket = ++renderCount;  // a newer render wins over a slower older one
  const grid = document.getElementById("grid");
  const info = document.getElementById("pageinfo");
  const countEl = document.getElementById("count");
  const meta = await OIG.load("meta");
  const st = readState();
  document.getElementById("class").value = st.cls === null ? "" : String(st.cls);
  document.getElementById("split").value = st.split === null ? "" : String(st.split);
  grid.setAttribute("aria-busy", "true");
  countEl.textContent = "loading…";
  let list = null;  // null: every image, in order
  if (st.cls !== null) list = await OIG.load("class-" + st.cls);
  if (st.split !== null) {
    const s = await OIG.load("split-" + st.split);
    list = list === null ? s : intersect(list, s);
  }
  const test = captionTest(st.word);
  const wordEl = document.getElementById("word");
  if (wordEl && document.activeElement !== wordEl) wordEl.value = st.word;
  if (test !== null && wordEl) {
    const said = (await OIG.load("captions")).filter(([, text]) => test(text)).map(([i]) => i);
    list = list === null ? said : intersect(list, said);
  }
  const total = list === null ? meta.total : list.length;
  const size = meta.pageSize;
  const pages = Math.max(1, Math.ceil(total / size));
  const page = Math.min(st.page, pages);
  const wanted = [];
  for (let i = (page - 1) * size; i < Math.min(total, page * size); i++) wanted.push(list === null ? i : list[i]);
  const chunkNos = [...new Set(wanted.map((i) => Math.floor(i / size)))];
  const chunks = new Map();
  await Promise.all(chunkNos.map(async (n) => chunks.set(n, await OIG.load("chunk-" + n))));
  if (ticket !== renderCount) return;
  const frag = document.createDocumentFragment();
  for (const i of wanted) frag.appendChild(tile(meta, chunks.get(Math.floor(i / size))[i % size]));
  grid.replaceChildren(frag);
  grid.setAttribute("aria-busy", "false");
  grid.dataset.page = String(page);
  info.textContent = `page ${page} of ${pages}`;
  countEl.textContent = `${total} image${total === 1 ? "" : "s"}`;
  document.getElementById("prev").disabled = page <= 1;
  document.getElementById("next").disabled = page >= pages;
  document.body.dataset.ready = String(ticket);  // for tests and scripts: this render is on screen
}

function start() {
  const cls = document.getElementById("class");
  const split = document.getElementById("split");
  const boxes = document.getElementById("boxes");
  const pick = (v) => (v === "" ? null : Number(v));
  cls.addEventListener("change", () => writeState({ ...readState(), cls: pick(cls.value), page: 1 }));
  split.addEventListener("change", () => writeState({ ...readState(), split: pick(split.value), page: 1 }));
  const word = document.getElementById("word");
  if (word) {
    const apply = () => { if (word.value.trim() !== readState().word) writeState({ ...readState(), word: word.value.trim(), page: 1 }); };
    word.addEventListener("change", apply);
    // Enter in the field submits the form: that would reload the page, so it applies the words instead.
    document.getElementById("controls").addEventListener("submit", (ev) => { ev.preventDefault(); apply(); });
  }
  boxes.addEventListener("change", () => document.getElementById("grid").classList.toggle("noboxes", !boxes.checked));
  const masks = document.getElementById("masks");
  if (masks) masks.addEventListener("change", () => document.getElementById("grid").classList.toggle("nomasks", !masks.checked));
  document.getElementById("prev").addEventListener("click", () => { const s = readState(); writeState({ ...s, page: s.page - 1 }); });
  document.getElementById("next").addEventListener("click", () => { const s = readState(); writeState({ ...s, page: s.page + 1 }); });
  window.addEventListener("hashchange", render);
  render().catch((err) => { document.getElementById("count").textContent = String(err.message); });
}

document.addEventListener("DOMContentLoaded", start);
