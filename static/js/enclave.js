// Automatic logoff, as the server enforces it: after the idle time the page leaves for the sign-in page, so
// patient data does not stay on an unattended screen. The server ends the session on its own either way.
(function () {
  var body = document.body;
  if (!body || !body.dataset.signedIn) { return; }
  var idle = parseInt(body.dataset.idleSeconds || "0", 10);
  if (!idle) { return; }
  var timer;
  function arm() {
    clearTimeout(timer);
    timer = setTimeout(function () { window.location.reload(); }, (idle + 5) * 1000);
  }
  // "enclave:activity": work the person started and the page carries on (upload.js while files are sending).
  ["click", "keydown", "enclave:activity"].forEach(function (name) {
    document.addEventListener(name, arm, { passive: true });
  });
  arm();
})();
