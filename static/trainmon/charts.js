// Live charts of a job's loss, accuracy and learning rate (templates/metrics/_charts.html),
// plus the helpers compare.js shares (window.trainmonCharts).
//
// The server downsamples (metrics:series) and sends only new points (metrics:poll); this file
// keeps its own column arrays as the source of truth and leaves Chart.js's decimation plugin
// off, because that plugin swaps dataset.data for a copy (Chart.js issue #11929).
(function () {
  "use strict";

  const DEFAULT_SMOOTHING = 0.6;
  // Past this many times the series' size (data-max-points), a chart fetches the downsampled
  // series again instead of growing.
  const CHART_GROWTH = 2;
  const RETRY_MS = 5000;
  const RAW_ALPHA = 0.28; // the raw line sits faint behind the smoothed one
  const PALETTE_SIZE = 8;

  // --- shared helpers ------------------------------------------------------------------------

  function cssVar(name) {
    const value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return value || "#888"; // app.css defines every colour this asks for
  }

  // Any CSS colour (hex, rgb(), hsl(), oklch()...) at an opacity, via the canvas's own parser.
  const probe = document.createElement("canvas");
  probe.width = probe.height = 1;
  const probeContext = probe.getContext("2d", { willReadFrequently: true });
  function withAlpha(colour, alpha) {
    probeContext.clearRect(0, 0, 1, 1);
    probeContext.fillStyle = "#000";
    probeContext.fillStyle = colour;
    probeContext.fillRect(0, 0, 1, 1);
    const [r, g, b, a] = probeContext.getImageData(0, 0, 1, 1).data;
    return `rgba(${r}, ${g}, ${b}, ${((a / 255) * alpha).toFixed(3)})`;
  }

  // Exponential moving average, debiased as TensorBoard does, so early points are not pulled
  // towards zero. Gaps (null) stay gaps and do not advance the average.
  function makeSmoother(weight) {
    let last = 0;
    let count = 0;
    return function (y) {
      if (y === null || !Number.isFinite(y)) return null;
      last = last * weight + (1 - weight) * y;
      count += 1;
      const debias = weight >= 1 ? 1 : 1 - Math.pow(weight, count);
      return last / debias;
    };
  }

  function toPoints(steps, values) {
    const points = new Array(steps.length);
    for (let i = 0; i < steps.length; i++) points[i] = { x: steps[i], y: values[i] };
    return points;
  }

  function smoothPoints(steps, values, weight) {
    const smooth = makeSmoother(weight);
    const points = new Array(steps.length);
    for (let i = 0; i < steps.length; i++) points[i] = { x: steps[i], y: smooth(values[i]) };
    return { points, smooth };
  }

  function formatCount(n) {
    return Number(n).toLocaleString();
  }

  function formatValue(value) {
    if (value === null || value === undefined || !Number.isFinite(value)) return "—";
    const magnitude = Math.abs(value);
    return magnitude !== 0 && (magnitude < 1e-3 || magnitude >= 1e5)
      ? value.toExponential(3)
      : value.toPrecision(4);
  }

  function chartOptions(yTitle) {
    const text = cssVar("--chart-text");
    const grid = cssVar("--chart-grid");
    return {
      animation: false,
      parsing: false,
      normalized: true, // x is sorted and unique: Chart.js can skip its own checks
      responsive: true,
      maintainAspectRatio: false,
      interaction: { mode: "index", intersect: false },
      elements: { point: { radius: 0, hitRadius: 4, hoverRadius: 3 }, line: { borderWidth: 1 } },
      plugins: {
        decimation: { enabled: false },
        legend: { display: false },
        tooltip: {
          callbacks: {
            title: (items) => (items.length ? `step ${formatCount(items[0].parsed.x)}` : ""),
            label: (item) => `${item.dataset.label}: ${formatValue(item.parsed.y)}`,
          },
        },
      },
      scales: {
        x: {
          type: "linear",
          title: { display: true, text: "step", color: text },
          ticks: { color: text, maxRotation: 0 },
          grid: { color: grid },
        },
        y: {
          type: "linear",
          title: { display: Boolean(yTitle), text: yTitle, color: text },
          ticks: { color: text },
          grid: { color: grid },
        },
      },
    };
  }

  // Re-read grid and text colours after a theme change. Works on the plain options object the
  // chart was made from (chart.options is a proxy that must not be written into piecemeal);
  // the caller then assigns it back with `chart.options = options` and updates.
  function applyAxisColours(options) {
    const text = cssVar("--chart-text");
    const grid = cssVar("--chart-grid");
    for (const scale of Object.values(options.scales)) {
      scale.ticks = { ...scale.ticks, color: text };
      scale.grid = { ...scale.grid, color: grid };
      if (scale.title) scale.title = { ...scale.title, color: text };
    }
    const legend = options.plugins.legend;
    if (legend && legend.display) legend.labels = { ...legend.labels, color: text };
  }

  function onThemeChange(callback) {
    window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", callback);
    // A theme switch by class or attribute on <html> changes the variables too.
    new MutationObserver(callback).observe(document.documentElement, {
      attributes: true,
      attributeFilter: ["class", "data-theme", "style"],
    });
  }

  function ready(callback) {
    if (document.readyState === "loading") {
      document.addEventListener("DOMContentLoaded", callback);
    } else {
      callback();
    }
  }

  window.trainmonCharts = {
    DEFAULT_SMOOTHING,
    PALETTE_SIZE,
    RAW_ALPHA,
    cssVar,
    withAlpha,
    makeSmoother,
    toPoints,
    smoothPoints,
    formatCount,
    chartOptions,
    applyAxisColours,
    onThemeChange,
    ready,
  };

  // --- the job page ------------------------------------------------------------------------

  // One metric drawn as a faint raw line and, if smoothed, a bold smoothed line over it.
  function MetricChart(canvas, { label, colourVar, smoothed, yTitle }) {
    this.colourVar = colourVar;
    this.smoothed = smoothed;
    this.smooth = null;
    const options = (this.options = chartOptions(yTitle));
    const datasets = [{ label, data: [], order: 2, borderWidth: smoothed ? 1 : 1.75 }];
    if (smoothed) {
      datasets.push({ label: `${label} (smoothed)`, data: [], order: 1, borderWidth: 2 });
    }
    this.chart = new Chart(canvas, { type: "line", data: { datasets }, options });
    this.applyColours();
  }

  MetricChart.prototype.applyColours = function () {
    const colour = cssVar(this.colourVar);
    const [raw, smooth] = this.chart.data.datasets;
    raw.borderColor = this.smoothed ? withAlpha(colour, RAW_ALPHA) : colour;
    raw.backgroundColor = raw.borderColor;
    if (smooth) {
      smooth.borderColor = colour;
      smooth.backgroundColor = colour;
    }
    applyAxisColours(this.options);
    this.chart.options = this.options;
  };

  MetricChart.prototype.setLogScale = function (on) {
    this.options.scales.y.type = on ? "logarithmic" : "linear";
    this.chart.options = this.options;
    this.chart.update("none");
  };

  // Replace everything (first load, refetch, smoothing change).
  MetricChart.prototype.setData = function (steps, values, weight) {
    const [raw, smooth] = this.chart.data.datasets;
    raw.data = toPoints(steps, values);
    if (smooth) {
      const smoothed = smoothPoints(steps, values, weight);
      smooth.data = smoothed.points;
      this.smooth = smoothed.smooth;
    }
    this.chart.update("none");
  };

  // Append new points in place: no new chart, and the smoother carries on where it was.
  MetricChart.prototype.append = function (steps, values) {
    const [raw, smooth] = this.chart.data.datasets;
    for (let i = 0; i < steps.length; i++) {
      raw.data.push({ x: steps[i], y: values[i] });
      if (smooth) smooth.data.push({ x: steps[i], y: this.smooth(values[i]) });
    }
    this.chart.update("none");
  };

  function setupJobCharts(root) {
    const seriesUrl = root.dataset.seriesUrl;
    const maxPoints = Number(root.dataset.maxPoints); // the server's SERIES_MAX_POINTS
    const poller = document.getElementById("charts-poller");
    const note = document.getElementById("points-note");
    const liveToggle = document.getElementById("live-toggle");
    const slider = document.getElementById("smoothing");
    const sliderValue = document.getElementById("smoothing-value");
    const logToggle = document.getElementById("log-scale");

    // The source of truth: what the charts show, as plain columns.
    const data = { steps: [], loss: [], accuracy: [], learning_rate: [] };
    const state = {
      loaded: false,
      fetching: false,
      paused: false,
      stopped: !poller, // a finished job's page has no poller
      total: 0, // points stored on the server, as far as we know
      lastStep: -1,
      status: root.dataset.status || "",
      weight: slider ? Number(slider.value) : DEFAULT_SMOOTHING,
    };

    const charts = {
      loss: new MetricChart(document.getElementById("chart-loss"), {
        label: "loss",
        colourVar: "--chart-loss",
        smoothed: true,
      }),
      accuracy: new MetricChart(document.getElementById("chart-accuracy"), {
        label: "accuracy",
        colourVar: "--chart-accuracy",
        smoothed: true,
      }),
      learning_rate: new MetricChart(document.getElementById("chart-lr"), {
        label: "learning rate",
        colourVar: "--chart-lr",
        smoothed: false,
      }),
    };

    function redrawAll() {
      for (const [name, chart] of Object.entries(charts)) {
        chart.setData(data.steps, data[name], state.weight);
      }
      updateNotes();
    }

    function updateNotes() {
      const shown = data.steps.length;
      root.dataset.pointCount = String(shown);
      root.dataset.totalPoints = String(state.total);
      if (!state.loaded) return;
      if (shown === 0) {
        note.textContent = "No points yet";
      } else if (shown >= state.total) {
        note.textContent = `Showing all ${formatCount(shown)} points`;
      } else {
        note.textContent = `Showing ${formatCount(shown)} of ${formatCount(state.total)} points`;
      }
      for (const name of ["accuracy", "learning_rate"]) {
        const empty = shown > 0 && data[name].every((value) => value === null);
        const figure = document.querySelector(`[data-metric="${name}"]`);
        if (figure) figure.toggleAttribute("data-empty", empty);
      }
    }

    function renderLiveToggle() {
      if (!liveToggle) return;
      if (state.stopped) {
        liveToggle.disabled = true;
        liveToggle.setAttribute("aria-pressed", "false");
        liveToggle.textContent = "Live updates ended";
      } else {
        liveToggle.setAttribute("aria-pressed", String(state.paused));
        liveToggle.textContent = state.paused ? "Resume live updates" : "Pause live updates";
      }
      root.dataset.live = state.stopped ? "ended" : state.paused ? "paused" : "on";
    }

    async function loadSeries() {
      state.fetching = true;
      try {
        const response = await fetch(`${seriesUrl}?max_points=${maxPoints}`, {
          headers: { Accept: "application/json" },
          credentials: "same-origin",
        });
        if (response.status >= 400 && response.status < 500) {
          // Gone or not ours (deleted, logged out): asking again will not change the answer.
          state.stopped = true;
          renderLiveToggle();
          note.textContent = "These metrics are no longer available.";
          return;
        }
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        const series = await response.json();
        data.steps = series.steps;
        data.loss = series.loss;
        data.accuracy = series.accuracy;
        data.learning_rate = series.learning_rate;
        state.total = series.total;
        state.lastStep = series.last_step === null ? -1 : series.last_step;
        state.status = series.status;
        state.loaded = true;
        redrawAll();
      } catch (error) {
        note.textContent = `Could not load the metrics (${error.message}); retrying…`;
        if (!state.retryPending) {
          state.retryPending = true;
          window.setTimeout(() => {
            state.retryPending = false;
            loadSeries();
          }, RETRY_MS);
        }
      } finally {
        state.fetching = false;
      }
    }

    function appendPoints(update) {
      if (update.terminal) {
        state.stopped = true;
        renderLiveToggle();
      }
      state.status = update.status;
      // A refetch in flight brings these points too; and never plot a step twice. A poll that
      // was in flight when the user paused is dropped: the chart holds still, and resuming
      // asks again from the last plotted step, so nothing is lost.
      if (state.fetching || !state.loaded || state.paused) return;
      let start = 0;
      while (start < update.steps.length && update.steps[start] <= state.lastStep) start++;
      const steps = update.steps.slice(start);
      if (steps.length) {
        state.total += update.catch_up ? update.total : steps.length;
        if (data.steps.length + steps.length > CHART_GROWTH * maxPoints) {
          loadSeries();
          return;
        }
        const columns = {};
        for (const name of ["loss", "accuracy", "learning_rate"]) {
          columns[name] = update[name].slice(start);
          for (const value of columns[name]) data[name].push(value);
        }
        for (const step of steps) data.steps.push(step);
        for (const [name, chart] of Object.entries(charts)) chart.append(steps, columns[name]);
        state.lastStep = steps[steps.length - 1];
      }
      updateNotes();
    }

    // Polling: htmx triggers the poller every poll_seconds (hx-trigger in _charts.html), and
    // the poller's htmx:beforeRequest listener below cancels each request this says no to.
    // (Not an hx-trigger filter: htmx evaluates those with eval, which the CSP refuses.)
    function liveUpdatesEnabled() {
      return (
        state.loaded &&
        !state.fetching &&
        !state.paused &&
        !state.stopped &&
        document.visibilityState === "visible"
      );
    }

    function pollNow() {
      if (poller && liveUpdatesEnabled()) htmx.trigger(poller, "charts-poll-now");
    }

    if (poller) {
      poller.addEventListener("htmx:beforeRequest", (event) => {
        if (!liveUpdatesEnabled()) event.preventDefault();
      });
      poller.addEventListener("htmx:configRequest", (event) => {
        // The page's header knows the status the user last saw (an action may have changed it).
        const header = document.getElementById("job-header");
        event.detail.parameters.after = state.lastStep;
        event.detail.parameters.status = (header && header.dataset.status) || state.status;
      });
      poller.addEventListener("htmx:afterSwap", () => {
        const holder = document.getElementById("poll-data");
        if (!holder || !holder.textContent.trim()) return;
        const update = JSON.parse(holder.textContent);
        holder.textContent = "";
        appendPoints(update);
      });
      poller.addEventListener("htmx:afterRequest", (event) => {
        const status = event.detail.xhr ? event.detail.xhr.status : 0;
        // 286: the job finished and htmx stopped polling. 404: the job was deleted meanwhile;
        // liveUpdatesEnabled() now says no, so no further request is sent.
        if (status === 286 || status === 404) {
          state.stopped = true;
          renderLiveToggle();
        }
        if (status === 404) note.textContent = "This job no longer exists.";
      });
      document.addEventListener("visibilitychange", pollNow);
      // Deleting the job leaves the page: no poll may race the redirect into a 404.
      document.body.addEventListener("htmx:beforeRequest", (event) => {
        if (!event.detail.elt.closest("[data-action=delete]")) return;
        state.stopped = true;
        htmx.trigger(poller, "htmx:abort"); // and one in flight, whose answer would be a 404
      });
    }

    if (liveToggle) {
      liveToggle.addEventListener("click", () => {
        state.paused = !state.paused;
        renderLiveToggle();
        pollNow();
      });
    }

    if (slider) {
      const showWeight = () => {
        if (sliderValue) sliderValue.textContent = state.weight.toFixed(2);
      };
      showWeight();
      slider.addEventListener("input", () => {
        state.weight = Number(slider.value);
        showWeight();
        charts.loss.setData(data.steps, data.loss, state.weight);
        charts.accuracy.setData(data.steps, data.accuracy, state.weight);
      });
    }

    if (logToggle) {
      logToggle.addEventListener("change", () => charts.loss.setLogScale(logToggle.checked));
    }

    onThemeChange(() => {
      for (const chart of Object.values(charts)) {
        chart.applyColours();
        chart.chart.update("none");
      }
    });

    renderLiveToggle();
    loadSeries();
  }

  ready(() => {
    const root = document.getElementById("charts");
    if (root && root.dataset.seriesUrl && typeof Chart !== "undefined") {
      setupJobCharts(root);
    } else if (root && typeof Chart === "undefined") {
      const note = document.getElementById("points-note");
      if (note) note.textContent = "Charts need Chart.js, which did not load.";
    }
  });
})();
