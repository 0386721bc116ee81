// Draw (or redraw in place) a plotly figure embedded with Django's json_script.
window.mintChart = function (targetId, dataId) {
  var target = document.getElementById(targetId);
  var source = document.getElementById(dataId);
  if (!target || !source || !window.Plotly) return;
  var figure = JSON.parse(source.textContent);
  Plotly.react(target, figure.data, figure.layout, { displaylogo: false, responsive: true });
};
