// loss-svg.ts — a small, dependency-free SVG loss curve from the engine's metrics.jsonl (train line + eval dots).
import { readFileSync } from "node:fs";

export interface MetricPoint { kind: "step" | "eval"; step: number; loss: number }

export function readMetrics(file: string): MetricPoint[] {
  const points: MetricPoint[] = [];
  for (const line of readFileSync(file, "utf8").split("\n")) {
    if (!line.trim()) continue;
    const e = JSON.parse(line);
    if ((e.event === "step" || e.event === "eval") && Number.isFinite(e.loss)) points.push({ kind: e.event, step: e.step, loss: e.loss });
  }
  return points;
}

// `baseline`: a dashed horizontal line (the run report draws the base model's eval loss, where step 0 would be).
export function lossCurveSvg(points: MetricPoint[], title: string, width = 480, height = 240, baseline?: number): string {
  const pad = { left: 48, right: 12, top: 24, bottom: 28 };
  const steps = points.map((p) => p.step), losses = points.map((p) => p.loss).concat(baseline !== undefined && Number.isFinite(baseline) ? [baseline] : []);
  const x0 = Math.min(...steps, 0), x1 = Math.max(...steps, 1);
  const y0 = Math.min(...losses, 0), y1 = Math.max(...losses, 1e-9);
  const x = (s: number) => pad.left + ((s - x0) / (x1 - x0 || 1)) * (width - pad.left - pad.right);
  const y = (l: number) => height - pad.bottom - ((l - y0) / (y1 - y0 || 1)) * (height - pad.top - pad.bottom);
  const train = points.filter((p) => p.kind === "step").map((p) => `${x(p.step).toFixed(1)},${y(p.loss).toFixed(1)}`).join(" ");
  const evalLine = points.filter((p) => p.kind === "eval").map((p) => `${x(p.step).toFixed(1)},${y(p.loss).toFixed(1)}`).join(" ");
  const evals = points.filter((p) => p.kind === "eval")
    .map((p) => `<circle cx="${x(p.step).toFixed(1)}" cy="${y(p.loss).toFixed(1)}" r="3" fill="#d62728"><title>eval ${p.loss.toFixed(4)} @ ${p.step}</title></circle>`);
  const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;");
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${width / 2}" y="16" text-anchor="middle">${esc(title)} — loss (train line, eval dots)</text>`,
    `<line x1="${pad.left}" y1="${height - pad.bottom}" x2="${width - pad.right}" y2="${height - pad.bottom}" stroke="#444"/>`,
    `<line x1="${pad.left}" y1="${pad.top}" x2="${pad.left}" y2="${height - pad.bottom}" stroke="#444"/>`,
    `<text x="${pad.left - 4}" y="${y(y1) + 4}" text-anchor="end">${y1.toFixed(2)}</text>`,
    `<text x="${pad.left - 4}" y="${y(y0)}" text-anchor="end">${y0.toFixed(2)}</text>`,
    `<text x="${x(x1)}" y="${height - 10}" text-anchor="end">step ${x1}</text>`,
    train ? `<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="${train}"/>` : "",
    evalLine.includes(" ") ? `<polyline fill="none" stroke="#d62728" stroke-width="1" stroke-dasharray="2 2" points="${evalLine}"/>` : "",
    ...evals,
    baseline !== undefined && Number.isFinite(baseline)
      ? `<line x1="${pad.left}" y1="${y(baseline).toFixed(1)}" x2="${width - pad.right}" y2="${y(baseline).toFixed(1)}" stroke="#6e7781" stroke-dasharray="6 4"/>` +
        `<text x="${width - pad.right}" y="${(y(baseline) - 4).toFixed(1)}" text-anchor="end" fill="#57606a">base model eval ${baseline.toFixed(2)}</text>`
      : "",
    `</svg>`,
    "",
  ].join("\n");
}
