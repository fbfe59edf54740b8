// The demo page: plain fetch() calls to the API this page is served by (no build step, no libraries).
"use strict";

const API_KEY_HEADER = "X-API-Key";
const KEY_STORAGE = "fr-triton-api-key"; // kept for the browser tab only (sessionStorage)
const API_ROOT = new URL("..", document.baseURI); // the page lives at <api>/ui/

const $ = (id) => document.getElementById(id);

function headers() {
  const key = $("api-key").value.trim();
  return key ? { [API_KEY_HEADER]: key } : {};
}

// POST a form; resolves to the Response, or throws an Error carrying the API's `detail`.
async function post(path, body) {
  const response = await fetch(new URL(path, API_ROOT), { method: "POST", body, headers: headers() });
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try {
      const payload = await response.json();
      detail = typeof payload.detail === "string" ? payload.detail : JSON.stringify(payload.detail);
    } catch {
      // not JSON: keep the status line
    }
    // The gallery (who is in the photo, enrollment) needs the key; the server's detail says where it is.
    if (response.status === 401) {
      detail += " (enter the API key at the top of the page)";
      $("api-key").setAttribute("aria-invalid", "true");
    } else if (response.status === 429) {
      const wait = response.headers.get("Retry-After");
      detail += wait ? ` (retry in ${wait} s, or enter the right API key at the top of the page)` : "";
    }
    throw new Error(detail);
  }
  return response;
}

// The optional anti-spoofing model: when Triton serves it (GET /models lists `antispoof`), the detect,
// identify and compare calls also ask for each face's liveness and the page shows a live/spoof badge.
// Without it every call and every result stays as it is. `body[data-liveness]` says which ("on"/"off").
const ANTISPOOF_MODEL = "antispoof";
const livenessOn = fetch(new URL("models", API_ROOT))
  .then((response) => (response.ok ? response.json() : { models: [] }))
  .then((answer) => answer.models.some((model) => model.name === ANTISPOOF_MODEL))
  .catch(() => false)
  .then((on) => {
    document.body.dataset.liveness = on ? "on" : "off";
    $("liveness-note").hidden = !on;
    return on;
  });

// `path` with `liveness=true` added when the model is there.
async function checked(path) {
  return (await livenessOn) ? `${path}${path.includes("?") ? "&" : "?"}liveness=true` : path;
}

// A badge element shows one verdict: "live 0.98" (green) or "spoof 0.12" (red); none: hidden.
function showBadge(element, verdict) {
  element.hidden = !verdict;
  if (verdict) {
    const word = verdict.is_real ? "live" : "spoof";
    element.textContent = `${word} ${verdict.real_score.toFixed(2)}`;
    element.className = `badge ${word}`;
    element.title = `anti-spoofing real score ${verdict.real_score.toFixed(3)}`;
  }
  return element;
}

function badge(verdict) {
  return showBadge(document.createElement("span"), verdict);
}

function formWith(entries) {
  const form = new FormData();
  for (const [name, value] of entries) {
    form.append(name, value);
  }
  return form;
}

// Show an image the API sent as a data: URL (an aligned face, an annotated photo) in an <img>.
function loadImage(img, src, what) {
  return new Promise((resolve, reject) => {
    img.onload = resolve;
    img.onerror = () => reject(new Error(`${what} could not be displayed`));
    img.src = src;
  });
}

// Run `work` for a form: busy button, result shown on success, error text otherwise.
function handle(formId, prefix, work) {
  const form = $(formId);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button");
    const error = $(`${prefix}-error`);
    button.disabled = true;
    error.hidden = true;
    form.parentElement.setAttribute("aria-busy", "true");
    try {
      await work();
      $(`${prefix}-result`).hidden = false;
    } catch (failure) {
      $(`${prefix}-result`).hidden = true;
      error.textContent = failure.message;
      error.hidden = false;
    } finally {
      button.disabled = false;
      form.parentElement.setAttribute("aria-busy", "false");
    }
  });
}

handle("compare-form", "compare", async () => {
  const form = formWith([["image_a", $("photo-a").files[0]], ["image_b", $("photo-b").files[0]]]);
  const result = await (await post(await checked("face-similarity?include_aligned=true"), form)).json();
  await Promise.all([
    loadImage($("aligned-a"), result.aligned_a, "the aligned face"),
    loadImage($("aligned-b"), result.aligned_b, "the aligned face"),
  ]);
  showBadge($("liveness-a"), result.liveness_a);
  showBadge($("liveness-b"), result.liveness_b);
  $("similarity").textContent = result.similarity.toFixed(3);
  const decision = $("decision");
  decision.textContent = result.same_person ? "same person" : "different people";
  decision.className = `decision ${result.same_person ? "same" : "different"}`;
  $("threshold").textContent = `(same person at ≥ ${result.threshold})`;
});

handle("identify-form", "identify", async () => {
  const file = $("identify-photo").files[0];
  // One call: the JSON with every face's names and scores, and the drawn photo in it (include_annotated).
  const answer = await post(await checked("identify?include_annotated=true"), formWith([["image", file]]));
  const result = await answer.json();
  await loadImage($("identify-image"), result.annotated, "the drawn photo");
  const list = $("identify-list");
  list.replaceChildren(
    ...result.faces.map((face) => {
      const item = document.createElement("li");
      const closest = face.matches[0];
      item.textContent = face.identity
        ? `${face.identity.name}: similarity ${face.identity.similarity.toFixed(3)}`
        : closest
          ? `unknown (closest: ${closest.name}, ${closest.similarity.toFixed(3)})`
          : "unknown (nobody is enrolled)";
      item.className = face.identity ? "known" : "unknown";
      if (face.liveness) {
        item.append(" ", badge(face.liveness));
      }
      return item;
    }),
  );
  if (!result.faces.length) {
    const item = document.createElement("li");
    item.textContent = "no face found";
    list.append(item);
  }
});

handle("detect-form", "detect", async () => {
  const file = $("detect-photo").files[0];
  const answer = await post(await checked("detect?include_annotated=true"), formWith([["image", file]]));
  const result = await answer.json();
  await loadImage($("detect-image"), result.annotated, "the drawn photo");
  $("detect-count").textContent = `${result.faces.length} face(s) in ${result.width}×${result.height} pixels`;
  const checkedFaces = result.faces.filter((face) => face.liveness);
  const list = $("detect-faces");
  list.hidden = !checkedFaces.length;
  list.replaceChildren(
    ...checkedFaces.map((face, index) => {
      const item = document.createElement("li");
      item.append(`face ${index + 1} (detector ${face.score.toFixed(2)}) `, badge(face.liveness));
      return item;
    }),
  );
});

$("enroll-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const status = $("enroll-status");
  const form = formWith([["name", $("enroll-name").value]]);
  for (const file of $("enroll-photos").files) {
    form.append("images", file);
  }
  status.textContent = "enrolling…";
  try {
    const person = await (await post("identities", form)).json();
    const skipped = person.rejected.map((r) => `photo ${r.index + 1}: ${r.reason}`).join("; ");
    status.textContent = `${person.name} enrolled from ${person.num_faces} photo(s)` + (skipped ? `; ${skipped}` : "");
  } catch (failure) {
    status.textContent = failure.message;
  }
});

const keyInput = $("api-key");
keyInput.value = sessionStorage.getItem(KEY_STORAGE) || "";
keyInput.addEventListener("change", () => {
  sessionStorage.setItem(KEY_STORAGE, keyInput.value.trim());
  keyInput.removeAttribute("aria-invalid");
});
