// The upload page (templates/studies/upload.html): each chosen file is sent on its own request with a progress
// bar, then the page polls the batch until every item it made is stored or rejected, showing each state live.
// No inline script anywhere: the Content-Security-Policy allows only scripts from this site.
(function () {
  "use strict";
  var root = document.getElementById("upload");
  if (!root) { return; }

  var POLL_MS = 1000;
  var PARALLEL = 3;
  var FINAL = { stored: true, duplicate: true, conflict: true, rejected: true };
  var GOOD = { stored: true, duplicate: true };

  var postUrl = root.dataset.postUrl;
  var statusUrl = root.dataset.statusUrl;
  var batch = root.dataset.batch;
  var maxBytes = parseInt(root.dataset.maxBytes || "0", 10);
  // The CSRF cookie is HttpOnly, so the token comes from the form on the page.
  var csrf = root.querySelector("input[name=csrfmiddlewaretoken]").value;
  var table = document.getElementById("upload-table");
  var tbody = table.querySelector("tbody");
  var summary = document.getElementById("upload-summary");
  var next = document.getElementById("upload-next");

  var queue = [];
  var active = 0;
  var chosen = 0;
  var sent = 0;
  var failedUploads = 0;
  var items = {};       // item public id -> { row, state }
  var pollTimer = null;

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function humanSize(bytes) {
    var units = ["bytes", "KB", "MB", "GB", "TB"];
    var n = bytes;
    var i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
  }

  function setState(row, state, label, reason) {
    row.dataset.state = state;
    var cell = row.querySelector("td.state");
    cell.textContent = "";
    var kind = GOOD[state] ? "ok" : (FINAL[state] ? "bad" : "pending");
    cell.appendChild(el("span", "badge " + kind, label));
    if (reason) { cell.appendChild(el("span", "reason", reason)); }
  }

  // Sending and checking is activity, as the server counts it: the automatic logoff (enclave.js) must not
  // reload the page in the middle of a long upload.
  function stillWorking() {
    document.dispatchEvent(new CustomEvent("enclave:activity"));
  }

  function setProgress(row, fraction) {
    stillWorking();
    var bar = row.querySelector("progress");
    var pct = Math.round(fraction * 100);
    bar.value = fraction;
    bar.textContent = pct + "%";
    row.querySelector(".pct").textContent = pct + "%";
  }

  function fileRow(name, size) {
    var row = el("tr", "file");
    row.appendChild(el("td", "name", name));
    row.appendChild(el("td", "size", humanSize(size)));
    var upload = el("td", "upload");
    var bar = el("progress");
    bar.max = 1;
    bar.value = 0;
    upload.appendChild(bar);
    upload.appendChild(el("span", "pct", "0%"));
    row.appendChild(upload);
    row.appendChild(el("td", "state"));
    setState(row, "waiting", "Waiting");
    return row;
  }

  function entryRow(item, after) {
    var row = el("tr", "entry");
    row.appendChild(el("td", "name", item.filename));
    row.appendChild(el("td", "size"));
    row.appendChild(el("td", "upload"));
    row.appendChild(el("td", "state"));
    after.parentNode.insertBefore(row, after.nextSibling);
    return row;
  }

  function track(item, row) {
    row.dataset.item = item.id;
    items[item.id] = { row: row, state: item.state };
    setState(row, item.state, item.state_label, item.reason);
  }

  function bindItems(job, list) {
    if (list.length === 1 && list[0].filename === job.path.slice(0, 255)) {
      track(list[0], job.row);
      return;
    }
    // A zip: the file's row says how many files it held; each gets its own row beneath.
    setState(job.row, "unpacked", "Zip of " + list.length + " file" + (list.length === 1 ? "" : "s"));
    var after = job.row;
    list.forEach(function (item) {
      var row = entryRow(item, after);
      track(item, row);
      after = row;
    });
  }

  function refusal(xhr) {
    var body = xhr.response;
    if (body && body.error) { return body.error; }
    if (xhr.status === 403) { return "Refused: you may not upload studies here, or the page has expired. Reload it."; }
    if (xhr.status === 413) { return "Refused: the file is too large."; }
    if (xhr.status === 0) { return "The upload failed: the connection was lost."; }
    if (xhr.status === 200) { return "Your session has ended. Sign in again and reload this page."; }
    return "The upload failed (HTTP " + xhr.status + ").";
  }

  function finishUpload() {
    active -= 1;
    sent += 1;
    pump();
    update();
  }

  function send(job) {
    active += 1;
    setState(job.row, "uploading", "Uploading");
    var xhr = new XMLHttpRequest();
    xhr.open("POST", postUrl);
    xhr.responseType = "json";
    xhr.setRequestHeader("X-CSRFToken", csrf);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.onprogress = function (event) {
      if (event.lengthComputable && event.total) { setProgress(job.row, event.loaded / event.total); }
    };
    xhr.onload = function () {
      if (xhr.status === 201 && xhr.response && xhr.response.items) {
        setProgress(job.row, 1);
        bindItems(job, xhr.response.items);
        schedulePoll();
      } else {
        failedUploads += 1;
        setState(job.row, "failed", "Not sent", refusal(xhr));
      }
      finishUpload();
    };
    xhr.onerror = function () {
      failedUploads += 1;
      setState(job.row, "failed", "Not sent", "The upload failed: the connection was lost.");
      finishUpload();
    };
    var data = new FormData();
    data.append("batch", batch);
    data.append("path", job.path);
    data.append("file", job.file, job.file.name);
    xhr.send(data);
  }

  function pump() {
    while (active < PARALLEL && queue.length) { send(queue.shift()); }
  }

  function pending() {
    return Object.keys(items).filter(function (id) { return !FINAL[items[id].state]; }).length;
  }

  function update() {
    var tally = {};
    Object.keys(items).forEach(function (id) {
      var state = items[id].state;
      tally[state] = (tally[state] || 0) + 1;
    });
    var parts = [];
    if (sent < chosen) { parts.push(sent + " of " + chosen + " files sent"); }
    [["stored", "stored"], ["duplicate", "already stored"], ["conflict", "kept as a conflict"],
      ["rejected", "rejected"]].forEach(function (pair) {
      if (tally[pair[0]]) { parts.push(tally[pair[0]] + " " + pair[1]); }
    });
    var waiting = pending();
    if (waiting) { parts.push(waiting + " being checked"); }
    if (failedUploads) { parts.push(failedUploads + " not sent"); }
    var done = sent === chosen && !waiting && chosen > 0;
    summary.textContent = (done ? "Done: " : "") + (parts.join(", ") || "Nothing chosen yet") + ".";
    summary.dataset.done = done ? "1" : "";
    next.hidden = !done;
  }

  function poll() {
    pollTimer = null;
    var request = new XMLHttpRequest();
    request.open("GET", statusUrl);
    request.responseType = "json";
    request.setRequestHeader("Accept", "application/json");
    request.onload = function () {
      var body = request.response;
      if (request.status === 200 && body && body.items) {
        body.items.forEach(function (item) {
          var known = items[item.id];
          if (known && known.state !== item.state) {
            known.state = item.state;
            setState(known.row, item.state, item.state_label, item.reason);
          }
        });
      }
      update();
      stillWorking();
      schedulePoll();
    };
    request.onerror = function () { schedulePoll(); };
    request.send();
  }

  function schedulePoll() {
    if (pollTimer === null && pending() > 0) { pollTimer = setTimeout(poll, POLL_MS); }
  }

  function choose(input) {
    var files = Array.prototype.slice.call(input.files || []);
    files.forEach(function (file) {
      var path = file.webkitRelativePath || file.name;
      var row = fileRow(path, file.size);
      tbody.appendChild(row);
      chosen += 1;
      if (maxBytes && file.size > maxBytes) {
        // The server would refuse it: say so now rather than after sending it.
        sent += 1;
        failedUploads += 1;
        setState(row, "failed", "Not sent", "The file is larger than the upload limit.");
        return;
      }
      queue.push({ file: file, path: path, row: row });
    });
    input.value = "";
    table.hidden = chosen === 0;
    pump();
    update();
  }

  ["upload-files", "upload-folder"].forEach(function (id) {
    var input = document.getElementById(id);
    if (input) { input.addEventListener("change", function () { choose(input); }); }
  });

  window.addEventListener("beforeunload", function (event) {
    if (active || queue.length) {
      event.preventDefault();
      event.returnValue = "";
    }
  });
})();
