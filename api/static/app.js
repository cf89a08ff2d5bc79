// The upload page: posts the form to /v1/score with the key typed in, and shows the answer.
// Everything from the answer is put in the page as text (textContent), never as HTML.
"use strict";

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
}

function clear(tbody) {
  while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
}

function show(result) {
  document.getElementById("summary").textContent =
    `Study ${result.study_key} (${result.new_study ? "new" : "seen before"}), model ${result.model.name}, ` +
    `threshold set ${result.threshold_set_id} (${result.threshold_method}), scoring run ${result.scoring_run_id}. ` +
    `Top findings: ${result.top_findings.map((f) => `${f.finding} ${f.probability.toFixed(3)}`).join(", ")}.`;
  const findings = document.querySelector("#findings-table tbody");
  clear(findings);
  Object.entries(result.probabilities)
    .sort((a, b) => b[1] - a[1])
    .forEach(([finding, p]) => {
      const row = document.createElement("tr");
      if (result.decisions[finding]) row.className = "positive";
      cell(row, finding);
      cell(row, p.toFixed(3), "num");
      cell(row, result.thresholds[finding].toFixed(2), "num");
      cell(row, result.decisions[finding] ? "positive" : "negative");
      findings.appendChild(row);
    });
  const figure = document.getElementById("heatmap-figure");
  figure.hidden = !result.gradcam;
  if (result.gradcam) {
    document.getElementById("heatmap").src = "data:image/png;base64," + result.gradcam.png_base64;
    document.getElementById("heatmap-caption").textContent = `Grad-CAM: ${result.gradcam.finding}`;
  }
  const similar = document.querySelector("#similar-table tbody");
  clear(similar);
  (result.similar_cases || []).forEach((c) => {
    const row = document.createElement("tr");
    cell(row, c.study_key);
    cell(row, c.cosine.toFixed(3), "num");
    cell(row, c.findings.length ? c.findings.join(", ") : "No Finding");
    cell(row, c.split || "");
    similar.appendChild(row);
  });
  const notes = document.getElementById("notes");
  clear(notes);
  result.notes.forEach((n) => {
    const li = document.createElement("li");
    li.textContent = n;
    notes.appendChild(li);
  });
  document.getElementById("result").hidden = false;
}

async function submit(event) {
  event.preventDefault();
  const status = document.getElementById("status");
  status.className = "";
  status.textContent = "Scoring...";
  const body = new FormData();
  body.append("image", document.getElementById("image").files[0]);
  for (const name of ["age", "sex", "view"]) {
    const value = document.getElementById(name).value;
    if (value !== "") body.append(name, value);
  }
  body.append("gradcam", document.getElementById("gradcam").checked ? "true" : "false");
  body.append("similar", document.getElementById("similar").value || "0");
  try {
    const response = await fetch("/v1/score", {
      method: "POST",
      headers: { "X-API-Key": document.getElementById("api-key").value },
      body,
    });
    const answer = await response.json();
    if (!response.ok) {
      status.className = "error";
      status.textContent = `Refused (${response.status}): ${answer.reason || answer.error}`;
      return;
    }
    status.textContent = `Scored in ${answer.timings_ms.total.toFixed(0)} ms.`;
    show(answer);
  } catch (err) {
    status.className = "error";
    status.textContent = `Request failed: ${err}`;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("score-form").addEventListener("submit", submit);
});
