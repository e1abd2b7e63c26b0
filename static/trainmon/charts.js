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

  const HEADLINE_COLUMNS = ["steps", "times", "loss", "accuracy", "learning_rate"];
  const NAMED_COLUMNS = ["steps", "times", "values"];
  const OTHER_SECTION = "other"; // keys without a "prefix/"
  const LOAD_BATCH_PANELS = 40; // charts per series request (the server takes 100 keys)
  const LOAD_AHEAD = "300px"; // start loading a chart this far below the fold
  // A named chart is a small panel (from 24rem wide, a third of the headline chart): 100
  // buckets (lowest, highest, last point each, ~4 px a bucket) and the first point draw its
  // shape, and a key from 6,400 points on is served from its summary, not its raw points.
  // bench/figures.py reads this line to request what the page requests.
  const NAMED_MAX_POINTS = 301;

  function formatDuration(seconds) {
    if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "";
    const sign = seconds < 0 ? "-" : "";
    let s = Math.abs(seconds);
    if (s < 60) return `${sign}${s < 10 ? s.toFixed(1) : Math.round(s)}s`;
    s = Math.round(s);
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    if (h) return `${sign}${h}h ${String(m).padStart(2, "0")}m`;
    return `${sign}${m}m ${String(s % 60).padStart(2, "0")}s`;
  }

  // Which line of a shared chart a key is, and the name it shares with its twin:
  // "val_loss" and "val/loss" are validation twins of "loss", "train_loss" or "train/loss".
  function splitRole(name) {
    for (const [prefix, role] of [
      ["val/", "val"],
      ["val_", "val"],
      ["train/", "train"],
      ["train_", "train"],
    ]) {
      if (name.startsWith(prefix) && name.length > prefix.length) {
        return { role, base: name.slice(prefix.length), sep: prefix[prefix.length - 1] };
      }
    }
    return { role: "plain", base: name, sep: "" };
  }

  // The training key a validation key shares a chart with, out of `names` (a Set), or null:
  // same separator first ("val/acc" with "train/acc"), then the unprefixed name, then the other.
  function trainingTwin(name, names) {
    const { role, base, sep } = splitRole(name);
    if (role !== "val") return null;
    const other = sep === "/" ? "_" : "/";
    for (const candidate of [`train${sep}${base}`, base, `train${other}${base}`]) {
      if (names.has(candidate)) return candidate;
    }
    return null;
  }

  function sectionOf(name) {
    const slash = name.indexOf("/");
    return slash > 0 ? name.slice(0, slash) : OTHER_SECTION;
  }

  function emptyColumns(columns) {
    const data = {};
    for (const column of columns) data[column] = [];
    return data;
  }

  // Points as they come from the server, their columns sorted by step (a poll's are already).
  function sortedColumns(source, columns) {
    const steps = source.steps || [];
    const data = {};
    for (const column of columns) {
      const values = source[column];
      data[column] =
        values && values.length === steps.length ? values.slice() : steps.map(() => null);
    }
    let sorted = true;
    for (let i = 1; i < steps.length && sorted; i++) sorted = steps[i - 1] < steps[i];
    if (sorted) return data;
    const order = steps.map((_, i) => i).sort((a, b) => steps[a] - steps[b]);
    for (const column of columns) data[column] = order.map((i) => data[column][i]);
    return data;
  }

  // Merges `add` into `into` (both sorted by step): a late point lands in its place, a step
  // already there takes the value sent last. Returns how many steps are new and whether they
  // all came after the last one (then the charts can append instead of redrawing).
  function mergeByStep(into, add, columns) {
    const n = add.steps.length;
    const have = into.steps.length;
    if (!n) return { added: 0, appended: true };
    if (!have || add.steps[0] > into.steps[have - 1]) {
      for (const column of columns) {
        const target = into[column];
        for (const value of add[column]) target.push(value);
      }
      return { added: n, appended: true };
    }
    const out = emptyColumns(columns);
    let i = 0;
    let j = 0;
    let added = 0;
    while (i < have || j < n) {
      let from;
      let index;
      if (j >= n || (i < have && into.steps[i] < add.steps[j])) {
        from = into;
        index = i++;
      } else {
        if (i >= have || add.steps[j] < into.steps[i]) added++;
        else i++; // the same step: keep the newer value
        from = add;
        index = j++;
      }
      for (const column of columns) out[column].push(from[column][index]);
    }
    for (const column of columns) into[column] = out[column];
    return { added, appended: false };
  }

  function pointsNote(shown, total) {
    if (shown === 0) return "No points yet";
    if (shown >= total) return `All ${formatCount(shown)} points`;
    return `${formatCount(shown)} of ${formatCount(total)} points`;
  }

  // Lines drawn as a faint raw line and, if smoothed, a bold smoothed line over it; one line
  // per key (a key and its validation twin share a chart).
  function MetricChart(canvas, { lines, yTitle }) {
    this.lines = lines.map((line) => ({ ...line }));
    this.smoothers = [];
    const options = (this.options = chartOptions(yTitle));
    const datasets = [];
    this.lines.forEach((line, index) => {
      line.rawIndex = datasets.length;
      datasets.push({
        label: line.label,
        data: [],
        order: 2,
        borderWidth: line.smoothed ? 1 : 1.75,
        spanGaps: false, // NaN (null) is a gap, not a line across it
        raw: line.smoothed,
        line: index,
      });
      if (line.smoothed) {
        line.smoothIndex = datasets.length;
        datasets.push({
          label: this.lines.length > 1 ? line.label : `${line.label} (smoothed)`,
          data: [],
          order: 1,
          borderWidth: 2,
          spanGaps: false,
          raw: false,
          line: index,
        });
      }
    });
    if (this.lines.length > 1) {
      // The lines need not share steps (validation runs every epoch): match by x, not index.
      options.interaction = { mode: "nearest", axis: "x", intersect: false };
      options.plugins.legend = {
        display: true,
        position: "bottom",
        labels: { boxHeight: 2, filter: (item, data) => !data.datasets[item.datasetIndex].raw },
      };
    }
    this.chart = new Chart(canvas, { type: "line", data: { datasets }, options });
    this.applyColours();
  }

  MetricChart.prototype.applyColours = function () {
    const datasets = this.chart.data.datasets;
    for (const line of this.lines) {
      const colour = cssVar(line.colourVar);
      const raw = datasets[line.rawIndex];
      raw.borderColor = line.smoothed ? withAlpha(colour, RAW_ALPHA) : colour;
      raw.backgroundColor = colour;
      if (line.smoothed) {
        datasets[line.smoothIndex].borderColor = colour;
        datasets[line.smoothIndex].backgroundColor = colour;
      }
    }
    applyAxisColours(this.options);
    this.chart.options = this.options;
  };

  MetricChart.prototype.configure = function ({ log, xAxis }) {
    this.options.scales.y.type = log ? "logarithmic" : "linear";
    applyXAxis(this.options, xAxis);
    this.chart.options = this.options;
  };

  // Replace a line's points (first load, refetch, smoothing change, a late point).
  MetricChart.prototype.setLine = function (index, xs, values, weight) {
    const line = this.lines[index];
    const datasets = this.chart.data.datasets;
    datasets[line.rawIndex].data = toPoints(xs, values);
    if (line.smoothed) {
      const smoothed = smoothPoints(xs, values, weight);
      datasets[line.smoothIndex].data = smoothed.points;
      this.smoothers[index] = smoothed.smooth;
    }
  };

  // Append points in place: no new chart, and the smoother carries on where it was.
  MetricChart.prototype.appendLine = function (index, xs, values) {
    const line = this.lines[index];
    const datasets = this.chart.data.datasets;
    const raw = datasets[line.rawIndex].data;
    const smooth = line.smoothed ? datasets[line.smoothIndex].data : null;
    for (let i = 0; i < xs.length; i++) {
      raw.push({ x: xs[i], y: values[i] });
      if (smooth) smooth.push({ x: xs[i], y: this.smoothers[index](values[i]) });
    }
  };

  MetricChart.prototype.update = function () {
    this.chart.update("none");
  };

  MetricChart.prototype.destroy = function () {
    this.chart.destroy();
  };

  function applyXAxis(options, xAxis) {
    const time = xAxis === "time";
    options.normalized = !time; // wall times need not rise with the step
    options.scales.x.title = { ...options.scales.x.title, text: time ? "time (relative)" : "step" };
    options.scales.x.ticks = {
      ...options.scales.x.ticks,
      callback: time ? (value) => formatDuration(value) : (value) => formatCount(value),
    };
    options.plugins.tooltip.callbacks.title = (items) => {
      if (!items.length) return "";
      const x = items[0].parsed.x;
      return time ? `+${formatDuration(x)}` : `step ${formatCount(x)}`;
    };
  }

  function setupJobCharts(root) {
    const seriesUrl = root.dataset.seriesUrl;
    const keysUrl = root.dataset.keysUrl;
    const maxPoints = Number(root.dataset.maxPoints); // the server's SERIES_MAX_POINTS
    const namedMaxPoints = Math.min(maxPoints, NAMED_MAX_POINTS);
    const poller = document.getElementById("charts-poller");
    const note = document.getElementById("points-note");
    const liveToggle = document.getElementById("live-toggle");
    const slider = document.getElementById("smoothing");
    const sliderValue = document.getElementById("smoothing-value");
    const logToggle = document.getElementById("log-scale");
    const xAxisPicker = document.getElementById("x-axis");
    const named = document.getElementById("named-charts");
    const filter = document.getElementById("key-filter");
    const keyCount = document.getElementById("key-count");
    const sectionsRoot = document.getElementById("key-sections");

    // The source of truth: what the charts show, as plain columns.
    let data = emptyColumns(HEADLINE_COLUMNS);
    const state = {
      loaded: false,
      keysLoaded: !keysUrl,
      fetching: false,
      paused: false,
      stopped: !poller, // a finished job's page has no poller
      total: 0, // points stored on the server, as far as we know
      cursor: null, // the ingest position the next poll asks from
      status: root.dataset.status || "",
      weight: slider ? Number(slider.value) : DEFAULT_SMOOTHING,
      log: Boolean(logToggle && logToggle.checked),
      xAxis: xAxisPicker ? xAxisPicker.value : "step",
      t0: null, // the earliest wall time plotted: time 0 of the time axis
      polledKeys: new Set(), // what the poll in flight asked for
      polledCursor: null,
    };

    function lowerCursor(cursor) {
      if (typeof cursor !== "number") return;
      state.cursor = state.cursor === null ? cursor : Math.min(state.cursor, cursor);
    }

    function xs(columns) {
      if (state.xAxis !== "time") return columns.steps;
      const t0 = state.t0 === null ? 0 : state.t0;
      return columns.times.map((t) => (t === null || t === undefined ? null : t - t0));
    }

    // In time mode a series starting earlier than time 0 moves time 0, and every chart redraws.
    function noteTimes(columns) {
      if (!columns.times.length) return false;
      let first = Infinity;
      for (const t of columns.times) if (t !== null && t < first) first = t;
      if (first === Infinity || (state.t0 !== null && first >= state.t0)) return false;
      state.t0 = first;
      return state.xAxis === "time";
    }

    const HEADLINE_LINES = {
      loss: { label: "loss", colourVar: "--chart-loss", smoothed: true },
      accuracy: { label: "accuracy", colourVar: "--chart-accuracy", smoothed: true },
      learning_rate: { label: "learning rate", colourVar: "--chart-lr", smoothed: false },
    };
    const HEADLINE_CANVASES = {
      loss: "chart-loss",
      accuracy: "chart-accuracy",
      learning_rate: "chart-lr",
    };
    const headlineCharts = {};
    for (const [name, line] of Object.entries(HEADLINE_LINES)) {
      headlineCharts[name] = new MetricChart(document.getElementById(HEADLINE_CANVASES[name]), {
        lines: [line],
      });
    }

    // --- named keys: sections, charts (panels), lazily drawn ------------------------------

    const panels = []; // in page order
    const panelOfKey = new Map();
    const panelOfFigure = new Map();
    const sections = new Map(); // prefix -> { details, body, count }
    const loadQueue = new Set();
    let loadTimer = null;

    const observer =
      named && "IntersectionObserver" in window
        ? new IntersectionObserver(onIntersect, { rootMargin: `${LOAD_AHEAD} 0px` })
        : null;

    function section(prefix) {
      let entry = sections.get(prefix);
      if (entry) return entry;
      const details = document.createElement("details");
      details.className = "key-section";
      details.open = true;
      details.dataset.section = prefix;
      const summary = document.createElement("summary");
      const title = document.createElement("span");
      title.className = "key-section-title";
      title.textContent = prefix === OTHER_SECTION ? "other" : `${prefix}/`;
      const count = document.createElement("span");
      count.className = "key-section-count muted num";
      summary.append(title, " ", count);
      const body = document.createElement("div");
      body.className = "key-grid";
      details.append(summary, body);
      details.addEventListener("toggle", () => {
        // A collapsed section frees its charts; opening it draws them again as they show.
        if (details.open) return;
        for (const panel of panels) if (panel.section === entry) dropChart(panel);
      });
      entry = { details, body, count, prefix };
      sections.set(prefix, entry);
      // Sections by name, "other" (unprefixed keys) last.
      const order = (p) => (p === OTHER_SECTION ? "\uffff" : p);
      const after = Array.from(sectionsRoot.children).find(
        (element) => order(element.dataset.section) > order(prefix)
      );
      sectionsRoot.insertBefore(details, after || null);
      return entry;
    }

    function addPanel(keys) {
      const prefix = sectionOf(keys[0]);
      const entry = section(prefix);
      const figure = document.createElement("figure");
      figure.className = "chart key-chart";
      figure.dataset.key = keys[0];
      const caption = document.createElement("figcaption");
      const label = document.createElement("span");
      label.className = "key-chart-label";
      const chartNote = document.createElement("span");
      chartNote.className = "key-chart-note charts-note num";
      caption.append(label, " ", chartNote);
      const holder = document.createElement("div");
      holder.className = "chart-canvas";
      const canvas = document.createElement("canvas");
      canvas.setAttribute("role", "img");
      holder.append(canvas);
      figure.append(caption, holder);
      const panel = {
        keys: [],
        section: entry,
        figure,
        label,
        note: chartNote,
        canvas,
        chart: null,
        series: {}, // key -> columns, plus total
        loaded: false,
        loading: false,
        visible: false,
        synced: -1, // the cursor its points are complete up to
      };
      for (const key of keys) attachKey(panel, key);
      // Charts by key name within a section; keys mostly come in order, so look at the end
      // first (a page may have a thousand keys).
      const last = entry.body.lastElementChild;
      const after =
        last && last.dataset.key > keys[0]
          ? Array.from(entry.body.children).find((element) => element.dataset.key > keys[0])
          : null;
      entry.body.insertBefore(figure, after || null);
      panels.push(panel);
      panelOfFigure.set(figure, panel);
      if (observer) observer.observe(figure);
      return panel;
    }

    function attachKey(panel, key) {
      panel.keys.push(key);
      panelOfKey.set(key, panel);
      panel.label.textContent = panel.keys.join(" · ");
      panel.canvas.setAttribute("aria-label", `${panel.keys.join(" and ")} by step`);
      if (panel.keys.length > 1) panel.figure.dataset.twin = panel.keys[1];
    }

    // Lays out charts for `names` not charted yet: a validation key joins its training twin
    // (a twin that appears mid-run gives the chart its second line).
    function addKeys(names) {
      const fresh = Array.from(new Set(names.filter((name) => !panelOfKey.has(name)))).sort();
      if (!fresh.length) return;
      const all = new Set([...panelOfKey.keys(), ...fresh]);
      for (const name of fresh) if (splitRole(name).role !== "val") addPanel([name]);
      for (const name of fresh) {
        if (splitRole(name).role !== "val") continue;
        const training = trainingTwin(name, all);
        const panel = training ? panelOfKey.get(training) : null;
        if (!panel || panel.keys.length > 1) {
          addPanel([name]);
          continue;
        }
        const drawn = Boolean(panel.chart);
        if (drawn) dropChart(panel);
        attachKey(panel, name);
        if (drawn && isOnScreen(panel.figure)) showPanel(panel);
      }
      overlayHeadlineTwins();
      applyFilter();
    }

    // The headline loss and accuracy are the training twins of "val_loss" / "val/loss" and
    // "val_accuracy" / "val/accuracy" when no named key "loss" / "accuracy" exists: the
    // validation line joins the headline chart too (and keeps its own chart in its section).
    const overlays = new Map(); // headline name -> its validation panel

    function overlayHeadlineTwins() {
      const names = new Set(panelOfKey.keys());
      for (const name of ["loss", "accuracy"]) {
        if (overlays.has(name) || names.has(name)) continue;
        const withHeadline = new Set([...names, name]);
        const val = Array.from(names)
          .sort()
          .find((key) => trainingTwin(key, withHeadline) === name);
        if (!val) continue;
        const canvas = document.getElementById(HEADLINE_CANVASES[name]);
        headlineCharts[name].destroy();
        const chart = new MetricChart(canvas, {
          lines: [HEADLINE_LINES[name], { label: val, colourVar: "--series-1", smoothed: true }],
        });
        chart.configure(state);
        headlineCharts[name] = chart;
        const figure = canvas.closest("figure");
        figure.dataset.twin = val;
        const panel = {
          keys: [val],
          section: null,
          figure,
          note: document.createElement("span"), // the headline's note says how many points
          canvas,
          chart,
          series: {},
          loaded: false,
          loading: false,
          visible: true, // the headline charts are always live
          synced: -1,
          lineOffset: 1,
          overlay: true,
        };
        overlays.set(name, panel);
        panels.push(panel);
        if (state.loaded) drawHeadline();
        queueLoad(panel);
      }
    }

    function isOnScreen(element) {
      const box = element.getBoundingClientRect();
      return box.bottom > 0 && box.top < window.innerHeight && box.width > 0;
    }

    function onIntersect(entries) {
      for (const entry of entries) {
        const panel = panelOfFigure.get(entry.target);
        if (!panel) continue;
        if (entry.isIntersecting) showPanel(panel);
        else panel.visible = false; // stays drawn, but is not polled until it shows again
      }
    }

    function showPanel(panel) {
      panel.visible = true;
      if (!panel.chart) {
        panel.chart = new MetricChart(panel.canvas, {
          lines: panel.keys.map((key, index) => ({
            label: key,
            colourVar: `--series-${index % PALETTE_SIZE}`,
            smoothed: true,
          })),
        });
        panel.chart.configure(state);
        panel.figure.dataset.chart = "loading";
      }
      // Points missed while it was off screen (or never loaded): fetch its series again.
      if (!panel.loaded || (state.cursor !== null && panel.synced < state.cursor)) queueLoad(panel);
    }

    function dropChart(panel) {
      if (panel.chart) panel.chart.destroy();
      panel.chart = null;
      panel.series = {};
      panel.loaded = false;
      panel.visible = false;
      panel.synced = -1;
      loadQueue.delete(panel);
      delete panel.figure.dataset.chart;
      panel.figure.removeAttribute("data-point-count");
      panel.note.textContent = "";
    }

    function queueLoad(panel) {
      if (panel.loading) {
        panel.reloadAfter = true; // a load in flight may predate what made this one needed
        return;
      }
      loadQueue.add(panel);
      if (loadTimer === null) loadTimer = window.setTimeout(flushLoads, 0);
    }

    function flushLoads() {
      loadTimer = null;
      const batch = Array.from(loadQueue).filter((panel) => panel.chart);
      loadQueue.clear();
      for (let i = 0; i < batch.length; i += LOAD_BATCH_PANELS) {
        loadPanels(batch.slice(i, i + LOAD_BATCH_PANELS));
      }
    }

    async function loadPanels(batch) {
      const keys = batch.flatMap((panel) => panel.keys);
      for (const panel of batch) panel.loading = true;
      const query = `keys=${encodeURIComponent(keys.join(","))}&max_points=${namedMaxPoints}`;
      try {
        const response = await fetch(`${seriesUrl}?${query}`, {
          headers: { Accept: "application/json" },
          credentials: "same-origin",
        });
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        const body = await response.json();
        let moved = false;
        for (const panel of batch) {
          if (!panel.chart) continue; // collapsed meanwhile
          // A twin that joined while this was out: its points come with the next load.
          if (!panel.keys.every((key) => key in body.keys)) panel.reloadAfter = true;
          panel.series = {};
          for (const key of panel.keys) {
            const source = body.keys[key] || {};
            const columns = sortedColumns(source, NAMED_COLUMNS);
            columns.total = source.total || 0;
            panel.series[key] = columns;
            moved = noteTimes(columns) || moved;
          }
          panel.loaded = true;
          panel.synced = body.cursor;
          drawPanel(panel);
        }
        lowerCursor(body.cursor);
        if (moved) redrawAll();
      } catch (error) {
        for (const panel of batch) {
          if (panel.chart) panel.note.textContent = `could not load (${error.message})`;
        }
        const retry = () => batch.forEach((panel) => panel.chart && queueLoad(panel));
        window.setTimeout(retry, RETRY_MS);
      } finally {
        for (const panel of batch) {
          panel.loading = false;
          if (panel.reloadAfter && panel.chart) {
            panel.reloadAfter = false;
            queueLoad(panel);
          }
        }
      }
    }

    function drawPanel(panel) {
      if (!panel.chart) return;
      panel.keys.forEach((key, index) => {
        const columns = panel.series[key] || emptyColumns(NAMED_COLUMNS);
        const line = index + (panel.lineOffset || 0);
        panel.chart.setLine(line, xs(columns), columns.values, state.weight);
      });
      panel.chart.update();
      notePanel(panel);
    }

    function notePanel(panel) {
      let shown = 0;
      let total = 0;
      for (const key of panel.keys) {
        const columns = panel.series[key];
        if (!columns) continue;
        shown += columns.steps.length;
        total += Math.max(columns.total, columns.steps.length);
      }
      panel.note.textContent = pointsNote(shown, total);
      if (panel.overlay) return;
      panel.figure.dataset.pointCount = String(shown);
      panel.figure.dataset.chart = "ready";
    }

    function livePanels() {
      return panels.filter(
        (panel) => panel.visible && panel.chart && panel.loaded && !panel.loading
      );
    }

    function applyFilter() {
      if (!filter) return;
      const query = filter.value.trim().toLowerCase();
      const shownBySection = new Map();
      let shown = 0;
      for (const panel of panels) {
        if (panel.overlay) continue;
        const match = !query || panel.keys.some((key) => key.toLowerCase().includes(query));
        panel.figure.hidden = !match;
        if (!match) panel.visible = false;
        const count = shownBySection.get(panel.section) || 0;
        shownBySection.set(panel.section, count + (match ? 1 : 0));
        if (match) shown += panel.keys.length;
      }
      for (const entry of sections.values()) {
        const count = shownBySection.get(entry) || 0;
        entry.details.hidden = count === 0;
        entry.count.textContent = `(${formatCount(count)})`;
      }
      const all = panelOfKey.size;
      if (keyCount) {
        keyCount.textContent = query
          ? `${formatCount(shown)} of ${formatCount(all)} keys`
          : `${formatCount(all)} key${all === 1 ? "" : "s"}`;
      }
      named.toggleAttribute("data-empty", all === 0);
    }

    async function loadKeys() {
      try {
        const response = await fetch(keysUrl, {
          headers: { Accept: "application/json" },
          credentials: "same-origin",
        });
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        const body = await response.json();
        lowerCursor(body.cursor);
        addKeys(body.keys.map((entry) => entry.key));
        state.keysLoaded = true;
        applyFilter();
      } catch (error) {
        if (keyCount) {
          keyCount.textContent = `Could not list the keys (${error.message}); retrying…`;
        }
        window.setTimeout(loadKeys, RETRY_MS);
      }
    }

    // --- the headline series ---------------------------------------------------------------

    function drawHeadline() {
      const x = xs(data);
      for (const [name, chart] of Object.entries(headlineCharts)) {
        chart.setLine(0, x, data[name], state.weight);
        chart.update();
      }
      updateNotes();
    }

    function redrawAll() {
      drawHeadline();
      for (const panel of panels) if (panel.chart && panel.loaded) drawPanel(panel);
    }

    function reconfigureAll() {
      for (const chart of Object.values(headlineCharts)) chart.configure(state);
      for (const panel of panels) if (panel.chart) panel.chart.configure(state);
      redrawAll();
    }

    function updateNotes() {
      const shown = data.steps.length;
      root.dataset.pointCount = String(shown);
      root.dataset.totalPoints = String(state.total);
      if (!state.loaded) return;
      note.textContent =
        shown && shown < state.total
          ? `Showing ${formatCount(shown)} of ${formatCount(state.total)} points`
          : shown
            ? `Showing all ${formatCount(shown)} points`
            : "No points yet";
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
        data = sortedColumns(series, HEADLINE_COLUMNS);
        state.total = series.total;
        state.status = series.status;
        lowerCursor(series.cursor);
        state.loaded = true;
        if (noteTimes(data)) redrawAll();
        else drawHeadline();
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

    function mergeHeadline(update) {
      if (state.fetching || !update) return; // the refetch in flight brings these points too
      const add = sortedColumns(update, HEADLINE_COLUMNS);
      const { added, appended } = mergeByStep(data, add, HEADLINE_COLUMNS);
      if (!add.steps.length) return;
      state.total += added;
      if (data.steps.length > CHART_GROWTH * maxPoints) {
        loadSeries();
        return;
      }
      if (noteTimes(add)) {
        redrawAll();
        return;
      }
      if (appended) {
        const x = xs(add);
        for (const [name, chart] of Object.entries(headlineCharts)) {
          chart.appendLine(0, x, add[name]);
          chart.update();
        }
        updateNotes();
      } else {
        drawHeadline();
      }
    }

    function mergePanel(panel, keyUpdates) {
      let redraw = false;
      for (const key of panel.keys) {
        const update = keyUpdates[key];
        if (!update || !update.steps || !update.steps.length) continue;
        const columns = panel.series[key];
        const add = sortedColumns(update, NAMED_COLUMNS);
        const { added } = mergeByStep(columns, add, NAMED_COLUMNS);
        columns.total += added;
        if (columns.steps.length > CHART_GROWTH * namedMaxPoints) {
          queueLoad(panel);
          return;
        }
        noteTimes(add);
        redraw = true;
      }
      if (redraw) drawPanel(panel);
    }

    // A poll's answer: everything ingested since the cursor it was sent with.
    function applyUpdate(update) {
      if (update.terminal) {
        state.stopped = true;
        renderLiveToggle();
      }
      state.status = update.status;
      // A poll that was in flight when the user paused is dropped, cursor and all: resuming
      // asks again from the same ingest position, so nothing is lost.
      if (!state.loaded || state.paused || update.cursor === undefined) return;
      const sent = state.polledKeys;
      let cursor = update.cursor;
      if (update.reload) {
        loadSeries();
        for (const panel of panels) if (panel.chart && panel.visible) queueLoad(panel);
      } else {
        const t0 = state.t0;
        // A refetch of the headline in flight drops this poll's headline points: ask again
        // from where this poll started (the refetch may predate some of them).
        if (state.fetching) cursor = Math.min(cursor, state.polledCursor);
        mergeHeadline(update.headline);
        for (const panel of livePanels()) {
          if (!panel.keys.every((key) => sent.has(key))) continue;
          mergePanel(panel, update.keys || {});
          panel.synced = Math.max(panel.synced, update.cursor);
        }
        if (state.t0 !== t0 && state.xAxis === "time") redrawAll();
      }
      // A chart that came on screen while this poll was out (and so is not in it) is complete
      // only up to its own load: ask again from there.
      for (const panel of livePanels()) {
        if (!panel.keys.every((key) => sent.has(key))) cursor = Math.min(cursor, panel.synced);
      }
      state.cursor = cursor;
      if (update.new_keys && update.new_keys.length) addKeys(update.new_keys);
    }

    // Polling: htmx triggers the poller every poll_seconds (hx-trigger in _charts.html), and
    // the poller's htmx:beforeRequest listener below cancels each request this says no to.
    // (Not an hx-trigger filter: htmx evaluates those with eval, which the CSP refuses.)
    function liveUpdatesEnabled() {
      return (
        state.loaded &&
        state.keysLoaded &&
        state.cursor !== null &&
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
        const keys = [];
        for (const panel of livePanels()) keys.push(...panel.keys);
        state.polledKeys = new Set(keys);
        state.polledCursor = state.cursor;
        event.detail.parameters.cursor = state.cursor;
        event.detail.parameters.keys = keys.join(",");
        event.detail.parameters.status = (header && header.dataset.status) || state.status;
        // And the write its progress and stats show: the page may have loaded them before
        // the charts' cursor, so an up-to-date cursor alone does not make them current.
        const progress = document.getElementById("job-progress");
        if (progress && progress.dataset.ingestSeq) {
          event.detail.parameters.progress_seq = progress.dataset.ingestSeq;
        }
      });
      // A poll with news answers JSON (metrics.views.poll): the points, and the progress and
      // stats figures, which job-figures.js places. htmx gets an empty body to swap instead, so
      // it still does the rest (a 286 stops the polling).
      poller.addEventListener("htmx:beforeSwap", (event) => {
        const xhr = event.detail.xhr;
        const type = xhr.getResponseHeader("Content-Type") || "";
        if (!event.detail.shouldSwap || !type.startsWith("application/json")) return;
        const update = JSON.parse(xhr.responseText);
        event.detail.serverResponse = "";
        applyUpdate(update);
        if (update.figures) {
          const figures = new CustomEvent("trainmon:job-figures", { detail: update.figures });
          document.dispatchEvent(figures);
        }
      });
      // After a status change the answer is HTML: the partials, and the JSON in #poll-data.
      poller.addEventListener("htmx:afterSwap", () => {
        const holder = document.getElementById("poll-data");
        if (!holder || !holder.textContent.trim()) return;
        const update = JSON.parse(holder.textContent);
        holder.textContent = "";
        applyUpdate(update);
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
        redrawAll();
      });
    }

    if (logToggle) {
      logToggle.addEventListener("change", () => {
        state.log = logToggle.checked;
        reconfigureAll();
      });
    }

    if (xAxisPicker) {
      xAxisPicker.addEventListener("change", () => {
        state.xAxis = xAxisPicker.value === "time" ? "time" : "step";
        root.dataset.xAxis = state.xAxis;
        reconfigureAll();
      });
    }

    if (filter) filter.addEventListener("input", applyFilter);

    onThemeChange(() => {
      for (const chart of Object.values(headlineCharts)) {
        chart.applyColours();
        chart.update();
      }
      for (const panel of panels) {
        if (!panel.chart) continue;
        panel.chart.applyColours();
        panel.chart.update();
      }
    });

    for (const chart of Object.values(headlineCharts)) chart.configure(state);
    root.dataset.xAxis = state.xAxis;
    renderLiveToggle();
    loadSeries();
    if (keysUrl && sectionsRoot) loadKeys();
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
