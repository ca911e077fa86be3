// The export progress page (templates/studies/export_progress.html): polls the export's status until it is done
// or failed, moving the progress bar, then shows the one-time download link. No inline script (CSP).
(function () {
  "use strict";
  var root = document.getElementById("export");
  if (!root) { return; }
  var POLL_MS = 1000;
  var url = root.dataset.statusUrl;
  var bar = document.getElementById("export-progress");
  var percent = document.getElementById("export-percent");
  var label = document.getElementById("export-label");
  var count = document.getElementById("export-count");
  var error = document.getElementById("export-error");
  var ready = document.getElementById("export-ready");
  var link = document.getElementById("export-download");
  var downloaded = document.getElementById("export-downloaded");
  var used = false;
  var LABELS = { queued: "Queued", running: "Running", done: "Done", failed: "Failed" };

  function show(s) {
    bar.value = s.percent;
    bar.textContent = s.percent + "%";
    percent.textContent = String(s.percent);
    label.textContent = LABELS[s.state] || s.state;
    count.textContent = s.done + " of " + s.total;
    error.textContent = s.error || "";
    error.hidden = !s.error;
    if (s.download_url) { link.href = s.download_url; }
    // A poll answered after the click may still say "not downloaded": the click is what this page knows last.
    ready.hidden = !s.download_url || used;
    downloaded.hidden = !(s.downloaded || used);
  }

  function poll() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { if (!r.ok) { throw new Error("status " + r.status); } return r.json(); })
      .then(function (s) {
        show(s);
        if (s.state !== "done" && s.state !== "failed") { window.setTimeout(poll, POLL_MS); }
      })
      .catch(function () { window.setTimeout(poll, POLL_MS * 3); });
  }

  link.addEventListener("click", function () {
    // The link works once: hide it as soon as it is used.
    used = true;
    window.setTimeout(function () { ready.hidden = true; downloaded.hidden = false; }, 0);
  });
  poll();
})();
