// Progressive enhancement only: every page works without this script.
// Live states over server-sent events, and group replays with a progress bar.
"use strict";

(function () {
  const status = () => document.getElementById("live-status");

  function say(text) {
    const s = status();
    if (s) s.textContent = text;
  }

  // One refresh at a time, the latest wins; what the reader opened or focused is kept.
  let asked = 0;
  let timer = null;

  function refreshDocument(holder) {
    clearTimeout(timer);
    timer = setTimeout(() => reload(holder, ++asked), 250);
  }

  async function reload(holder, ticket) {
    // The document's own page: this one may be the answer to a refused form (a POST).
    const answer = await fetch("/ui/documents/" + encodeURIComponent(holder.dataset.document),
                               { credentials: "same-origin" });
    if (!answer.ok || ticket !== asked) return;
    const page = new DOMParser().parseFromString(await answer.text(), "text/html");
    const fresh = page.getElementById("document-live");
    if (!fresh || ticket !== asked) return;
    const opened = [...holder.querySelectorAll("details")].map((d) => d.open);
    const focused = holder.contains(document.activeElement) ? document.activeElement : null;
    const focusKey = focused && (focused.getAttribute("href") || focused.id);
    // What is being typed in a request's form outlives the refresh.
    const typed = [...holder.querySelectorAll("input[id]")].map((el) => [el.id, el.value]);
    holder.replaceChildren(...fresh.childNodes);
    typed.forEach(([id, value]) => {
      const again = document.getElementById(id);
      if (again && value) again.value = value;
    });
    holder.querySelectorAll("details").forEach((d, i) => { if (opened[i]) d.open = true; });
    if (focusKey) {
      const again = [...holder.querySelectorAll("a, button, summary, [id]")].find(
        (el) => el.getAttribute("href") === focusKey || el.id === focusKey);
      if (again) again.focus();
    }
  }

  function onState(event) {
    const data = JSON.parse(event.data);
    document.querySelectorAll("[data-state-of]").forEach((el) => {
      if (el.dataset.stateOf !== data.id) return;
      el.textContent = data.state_label;
      el.className = "state state-" + data.state;
    });
    const holder = document.getElementById("document-live");
    if (holder && holder.dataset.document === data.id) {
      say("Document " + data.id + " : " + data.state_label);
      refreshDocument(holder);
    }
  }

  function startLive() {
    const body = document.body;
    if (!body.dataset.live || !window.EventSource) return;
    const source = new EventSource(body.dataset.live + "?apres=" + (body.dataset.after || "0"));
    source.addEventListener("state", onState);
    source.addEventListener("reload", () => {
      const holder = document.getElementById("document-live");
      if (holder) refreshDocument(holder);
      else say("Des mises à jour ont été manquées : rechargez la page.");
    });
    source.addEventListener("open", () => { body.dataset.liveOpen = "1"; });
    source.addEventListener("error", () => { delete body.dataset.liveOpen; });
    window.addEventListener("pagehide", () => source.close());
  }

  function replayGroups() {
    document.querySelectorAll("form.replay-group").forEach((form) => {
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        const bar = form.querySelector("progress");
        const text = form.querySelector("output");
        const button = form.querySelector("button");
        button.disabled = true;
        bar.hidden = false;
        let done = 0;
        for (;;) {
          const fields = new FormData(form);
          fields.set("deja", String(done));
          const answer = await fetch(form.action, {
            method: "POST", body: new URLSearchParams(fields), credentials: "same-origin",
            headers: { Accept: "application/json" },
          });
          if (!answer.ok) { text.textContent = "Échec (" + answer.status + ")"; break; }
          const result = await answer.json();
          done = result.done;
          bar.max = done + result.remaining;
          bar.value = done;
          text.textContent = done + " rejoué(s), " + result.remaining + " restant(s)";
          const total = Number(form.dataset.total || "0");
          if (!result.remaining || !result.count || (total && done >= total)) break;
        }
        button.disabled = false;
      });
    });
  }

  document.addEventListener("DOMContentLoaded", () => { startLive(); replayGroups(); });
})();
