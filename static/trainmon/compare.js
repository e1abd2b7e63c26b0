// The compare page: one chart of the chosen key (the headline loss by default), a line per
// job in its palette colour (--series-N); picking another key reloads the page with ?key=.
// Needs charts.js (window.trainmonCharts) loaded first.
(function () {
  "use strict";

  const tc = window.trainmonCharts;

  tc.ready(() => {
    // The key picker submits itself; its button is for a page without scripts.
    const keyForm = document.getElementById("compare-key-form");
    const keyPicker = document.getElementById("compare-key");
    if (keyForm && keyPicker) {
      const submit = document.getElementById("compare-key-submit");
      if (submit) submit.hidden = true;
      keyPicker.addEventListener("change", () => keyForm.requestSubmit());
    }
    const canvas = document.getElementById("compare-chart");
    const source = document.getElementById("compare-data");
    if (!canvas || !source || typeof Chart === "undefined") return;
    const jobs = JSON.parse(source.textContent);
    const slider = document.getElementById("smoothing");
    const sliderValue = document.getElementById("smoothing-value");
    const logToggle = document.getElementById("log-scale");
    let weight = slider ? Number(slider.value) : tc.DEFAULT_SMOOTHING;

    // Per job: a faint raw line (no legend entry) and a bold smoothed line named after the job.
    const datasets = [];
    // Lines need not share steps: a tooltip matches by x, and NaN (null) stays a gap.
    for (const job of jobs) {
      const common = { data: [], job, spanGaps: false };
      datasets.push({ ...common, label: `${job.name} (raw)`, borderWidth: 1, order: 2, raw: true });
      datasets.push({ ...common, label: job.name, borderWidth: 2, order: 1, raw: false });
    }
    const options = tc.chartOptions(canvas.dataset.key || "loss");
    options.interaction = { mode: "nearest", axis: "x", intersect: false };
    options.plugins.legend = {
      display: true,
      position: "bottom",
      labels: { filter: (item, chartData) => !chartData.datasets[item.datasetIndex].raw },
    };
    // A legend click hides a job's raw line with its smoothed one.
    options.plugins.legend.onClick = (event, item, legend) => {
      const chart = legend.chart;
      const job = chart.data.datasets[item.datasetIndex].job;
      const visible = chart.isDatasetVisible(item.datasetIndex);
      chart.data.datasets.forEach((dataset, index) => {
        if (dataset.job === job) chart.setDatasetVisibility(index, !visible);
      });
      chart.update("none");
    };
    options.plugins.tooltip.filter = (item) => !item.dataset.raw;
    const chart = new Chart(canvas, { type: "line", data: { datasets }, options });
    // The chart reads `options` again whenever it is assigned back (see applyAxisColours).
    const reapply = () => {
      chart.options = options;
      chart.update("none");
    };

    function fill() {
      for (const dataset of chart.data.datasets) {
        const { steps, values } = dataset.job;
        dataset.data = dataset.raw
          ? tc.toPoints(steps, values)
          : tc.smoothPoints(steps, values, weight).points;
      }
      chart.update("none");
    }

    function colour() {
      for (const dataset of chart.data.datasets) {
        const base = tc.cssVar(`--series-${dataset.job.colour % tc.PALETTE_SIZE}`);
        dataset.borderColor = dataset.raw ? tc.withAlpha(base, tc.RAW_ALPHA) : base;
        dataset.backgroundColor = base;
      }
      tc.applyAxisColours(options);
      reapply();
    }

    if (slider) {
      slider.addEventListener("input", () => {
        weight = Number(slider.value);
        if (sliderValue) sliderValue.textContent = weight.toFixed(2);
        fill();
      });
    }
    if (logToggle) {
      logToggle.addEventListener("change", () => {
        options.scales.y.type = logToggle.checked ? "logarithmic" : "linear";
        reapply();
      });
    }
    tc.onThemeChange(colour);
    colour();
    fill();
  });
})();
