// Charts of per-meter figures: labels and values come from the canvas's data attributes
// (values are decimal strings; the chart only draws them, the tables show them exactly).
(function () {
  "use strict";
  var drawn = new WeakMap();

  var COLOURS = ["#3d6fb6", "#c0504d", "#4f8f3a", "#8064a2", "#d08a2b", "#2b9aa0"];

  // A daily series: day labels and a line per meter (data-series).
  function drawSeries(canvas, series) {
    var chart = new Chart(canvas, {
      type: "line",
      data: { labels: series.labels, datasets: series.datasets.map(function (set, i) {
        return { label: set.label, data: set.values.map(Number), borderColor:
          COLOURS[i % COLOURS.length], backgroundColor: COLOURS[i % COLOURS.length],
          pointRadius: 2, tension: 0 };
      }) },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false,
        plugins: { tooltip: { callbacks: { label: function (item) {
          return item.dataset.label + ": " + series.datasets[item.datasetIndex].values[item.dataIndex];
        } } } },
        scales: { y: { beginAtZero: true } }
      }
    });
    drawn.set(canvas, chart);
  }

  function draw(canvas) {
    if (drawn.has(canvas) || typeof Chart === "undefined") { return; }
    var series = canvas.getAttribute("data-series");
    if (series) { drawSeries(canvas, JSON.parse(series)); return; }
    var labels = JSON.parse(canvas.getAttribute("data-labels") || "[]");
    var texts = JSON.parse(canvas.getAttribute("data-values") || "[]");
    if (!labels.length) { return; }
    var chart = new Chart(canvas, {
      type: "bar",
      data: { labels: labels, datasets: [{ label: "quantity", data: texts.map(Number),
        backgroundColor: "#3d6fb6" }] },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false,
        plugins: { legend: { display: false }, tooltip: { callbacks: {
          label: function (item) { return texts[item.dataIndex]; } } } },
        scales: { y: { beginAtZero: true } }
      }
    });
    drawn.set(canvas, chart);
  }

  function drawAll(root) {
    (root || document).querySelectorAll("canvas.chart").forEach(draw);
  }

  document.addEventListener("DOMContentLoaded", function () { drawAll(document); });
  document.addEventListener("htmx:afterSwap", function (event) { drawAll(event.target); });
})();
