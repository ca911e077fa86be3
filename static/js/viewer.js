// The frame viewer of the study page (templates/studies/study.html). The page gives the series and their
// instances as a JSON data block (#viewer-data: {series: [{id, instances: [{url, number, frames}]}]}, url being
// the instance's WADO-RS URL); each frame is shown as a PNG from our WADO-RS `/frames/<n>/rendered` endpoint,
// with the window asked of the server (`window=center,width,LINEAR`), so what is seen is what the archive
// rendered. Every frame read is audited by that endpoint. No inline script or style anywhere (CSP): the zoom
// and pan go through the CSS object model.
(function () {
  "use strict";
  var root = document.getElementById("viewer");
  var dataNode = document.getElementById("viewer-data");
  if (!root || !dataNode) { return; }

  var data = JSON.parse(dataNode.textContent);
  var img = document.getElementById("frame");
  var viewport = document.getElementById("viewport");
  var slider = document.getElementById("frame-slider");
  var positionOut = document.getElementById("frame-position");
  var windowOut = document.getElementById("frame-window");
  var zoomOut = document.getElementById("frame-zoom");
  var errorNode = document.getElementById("frame-error");
  var presetButtons = Array.prototype.slice.call(root.querySelectorAll("button.preset"));
  var seriesButtons = Array.prototype.slice.call(root.querySelectorAll("button.series-pick"));

  var ZOOM_STEP = 1.25;
  var ZOOM_MIN = 0.25;
  var ZOOM_MAX = 16;
  var WHEEL_STEP = 50;        // pixels of wheel travel per image (trackpads send small deltas)
  var DRAG_INTERVAL_MS = 90;  // at most this often a new rendering while dragging the window

  var seriesById = {};
  data.series.forEach(function (s) { seriesById[s.id] = s; });

  var state = {
    frames: [],       // the current series as a flat list of {url, number, frame, frames}
    index: 0,
    window: null,     // null: the file's own window; else {center, width}
    zoom: 1,          // 1: the image fits the viewport
    panX: 0,
    panY: 0
  };
  var fileWindows = {};  // instance URL -> its own window, read from its metadata when a drag needs a start
  var wheelTravel = 0;
  var lastActivity = 0;

  // Looking at images is activity, as the server counts it: the automatic logoff (enclave.js) must not fire
  // while someone scrolls through a series.
  function stillWorking() {
    var now = Date.now();
    if (now - lastActivity > 5000) {
      lastActivity = now;
      document.dispatchEvent(new CustomEvent("enclave:activity"));
    }
  }

  function flatten(series) {
    var frames = [];
    series.instances.forEach(function (instance) {
      for (var f = 1; f <= instance.frames; f += 1) {
        frames.push({ url: instance.url, number: instance.number, frame: f, frames: instance.frames });
      }
    });
    return frames;
  }

  function round(value) { return Math.round(value * 10) / 10; }

  function frameUrl(item) {
    var url = item.url + "/frames/" + item.frame + "/rendered?accept=" + encodeURIComponent("image/png");
    if (state.window) {
      url += "&window=" + round(state.window.center) + "," + round(state.window.width) + ",LINEAR";
    }
    return url;
  }

  function showStatus() {
    var item = state.frames[state.index];
    var text = "Image " + (state.index + 1) + " of " + state.frames.length;
    if (item.number !== null && item.number !== undefined) { text += " · instance " + item.number; }
    if (item.frames > 1) { text += ", frame " + item.frame + " of " + item.frames; }
    positionOut.textContent = text;
    windowOut.textContent = state.window
      ? "W " + round(state.window.width) + " · L " + round(state.window.center)
      : "Default window";
    zoomOut.textContent = state.zoom === 1 ? "Fit" : Math.round(state.zoom * 100) + "%";
  }

  function render() {
    if (!state.frames.length) { return; }
    var url = frameUrl(state.frames[state.index]);
    if (img.getAttribute("src") !== url) {
      img.dataset.loading = "1";
      img.setAttribute("src", url);
    }
    slider.value = String(state.index + 1);
    showStatus();
  }

  function go(index) {
    if (!state.frames.length) { return; }
    var next = Math.max(0, Math.min(state.frames.length - 1, index));
    if (next === state.index && img.getAttribute("src")) { return; }
    state.index = next;
    stillWorking();
    render();
  }

  function applyTransform() {
    img.style.transform = "translate(" + state.panX + "px, " + state.panY + "px) scale(" + state.zoom + ")";
    showStatus();
  }

  function zoomTo(zoom) {
    state.zoom = Math.max(ZOOM_MIN, Math.min(ZOOM_MAX, zoom));
    if (state.zoom === 1) { state.panX = 0; state.panY = 0; }
    stillWorking();
    applyTransform();
  }

  function fit() {
    state.panX = 0;
    state.panY = 0;
    zoomTo(1);
  }

  function pressPreset(key) {
    presetButtons.forEach(function (b) { b.setAttribute("aria-pressed", b.dataset.preset === key ? "true" : "false"); });
  }

  function choosePreset(button) {
    if (button.dataset.center !== undefined) {
      state.window = { center: parseFloat(button.dataset.center), width: parseFloat(button.dataset.width) };
    } else {
      state.window = null;
    }
    pressPreset(button.dataset.preset);
    stillWorking();
    render();
  }

  function chooseSeries(id) {
    var series = seriesById[id];
    if (!series) { return; }
    seriesButtons.forEach(function (b) { b.setAttribute("aria-pressed", b.dataset.series === id ? "true" : "false"); });
    state.frames = flatten(series);
    state.index = 0;
    slider.max = String(Math.max(1, state.frames.length));
    slider.disabled = state.frames.length < 2;
    root.dataset.series = id;
    stillWorking();
    render();
  }

  // The file's own window, as a start for dragging from "Default": from the instance's metadata (one audited
  // read), else the full range of its stored bits.
  function number(ds, tag) {
    var element = ds[tag];
    var value = element && element.Value && element.Value[0];
    return value === undefined || value === null || value === "" ? null : Number(value);
  }

  function fileWindow(url) {
    if (fileWindows[url]) { return Promise.resolve(fileWindows[url]); }
    return fetch(url + "/metadata", { credentials: "same-origin", headers: { Accept: "application/dicom+json" } })
      .then(function (r) { if (!r.ok) { throw new Error("status " + r.status); } return r.json(); })
      .then(function (body) {
        var ds = body[0] || {};
        var center = number(ds, "00281050");
        var width = number(ds, "00281051");
        if (center === null || width === null || width < 1) {
          var bits = number(ds, "00280101") || 8;
          var slope = number(ds, "00281053") || 1;
          var intercept = number(ds, "00281052") || 0;
          center = intercept + slope * Math.pow(2, bits - 1);
          width = slope * Math.pow(2, bits);
        }
        fileWindows[url] = { center: center, width: width };
        return fileWindows[url];
      })
      .catch(function () { return { center: 40, width: 400 }; });
  }

  // Dragging: left button changes window (horizontal: width) and level (vertical: center); with Shift it pans.
  var drag = null;
  var dragTimer = null;

  function flushDrag() {
    dragTimer = null;
    render();
  }

  viewport.addEventListener("pointerdown", function (event) {
    if (event.button !== 0 || !state.frames.length) { return; }
    viewport.focus();
    viewport.setPointerCapture(event.pointerId);
    drag = { x: event.clientX, y: event.clientY, pan: event.shiftKey, panX: state.panX, panY: state.panY, start: null };
    if (drag.pan) {
      viewport.classList.add("panning");
    } else if (state.window) {
      drag.start = { center: state.window.center, width: state.window.width };
    } else {
      var pending = drag;
      fileWindow(state.frames[state.index].url).then(function (w) {
        if (drag === pending) { pending.start = w; }
      });
    }
    event.preventDefault();
  });

  viewport.addEventListener("pointermove", function (event) {
    if (!drag) { return; }
    var dx = event.clientX - drag.x;
    var dy = event.clientY - drag.y;
    if (drag.pan) {
      state.panX = drag.panX + dx;
      state.panY = drag.panY + dy;
      applyTransform();
      return;
    }
    if (!drag.start) { return; }
    var sensitivity = Math.max(0.5, drag.start.width / 300);
    state.window = {
      center: drag.start.center + dy * sensitivity,
      width: Math.max(1, drag.start.width + dx * sensitivity)
    };
    pressPreset("");
    showStatus();
    if (!dragTimer) { dragTimer = window.setTimeout(flushDrag, DRAG_INTERVAL_MS); }
  });

  function endDrag() {
    if (!drag) { return; }
    drag = null;
    viewport.classList.remove("panning");
    if (dragTimer) { window.clearTimeout(dragTimer); dragTimer = null; }
    stillWorking();
    render();
  }
  viewport.addEventListener("pointerup", endDrag);
  viewport.addEventListener("pointercancel", endDrag);

  viewport.addEventListener("wheel", function (event) {
    if (!state.frames.length) { return; }
    event.preventDefault();
    if (event.ctrlKey) {
      zoomTo(event.deltaY < 0 ? state.zoom * ZOOM_STEP : state.zoom / ZOOM_STEP);
      return;
    }
    wheelTravel += event.deltaMode === 0 ? event.deltaY : event.deltaY * WHEEL_STEP;
    if (Math.abs(wheelTravel) >= WHEEL_STEP) {
      go(state.index + (wheelTravel > 0 ? 1 : -1));
      wheelTravel = 0;
    }
  }, { passive: false });

  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (event.altKey || event.metaKey || event.ctrlKey) { return; }
    if (target !== document.body && !root.contains(target)) { return; }
    if (/^(INPUT|SELECT|TEXTAREA)$/.test(target.tagName)) { return; }
    var handled = true;
    switch (event.key) {
      case "ArrowDown": case "ArrowRight": go(state.index + 1); break;
      case "ArrowUp": case "ArrowLeft": go(state.index - 1); break;
      case "PageDown": go(state.index + 10); break;
      case "PageUp": go(state.index - 10); break;
      case "Home": go(0); break;
      case "End": go(state.frames.length - 1); break;
      case "+": case "=": zoomTo(state.zoom * ZOOM_STEP); break;
      case "-": zoomTo(state.zoom / ZOOM_STEP); break;
      case "0": fit(); break;
      default: handled = false;
    }
    if (handled) { event.preventDefault(); }
  });

  slider.addEventListener("input", function () { go(parseInt(slider.value, 10) - 1); });
  presetButtons.forEach(function (b) { b.addEventListener("click", function () { choosePreset(b); }); });
  seriesButtons.forEach(function (b) { b.addEventListener("click", function () { chooseSeries(b.dataset.series); }); });
  document.getElementById("zoom-in").addEventListener("click", function () { zoomTo(state.zoom * ZOOM_STEP); });
  document.getElementById("zoom-out").addEventListener("click", function () { zoomTo(state.zoom / ZOOM_STEP); });
  document.getElementById("zoom-fit").addEventListener("click", fit);

  img.addEventListener("load", function () {
    delete img.dataset.loading;
    errorNode.hidden = true;
  });
  img.addEventListener("error", function () {
    delete img.dataset.loading;
    errorNode.hidden = false;
  });

  if (data.series.length) {
    chooseSeries(data.series[0].id);
    applyTransform();
  }
})();
