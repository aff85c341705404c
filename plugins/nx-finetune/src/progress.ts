// progress.ts — turns engine events into a progress bar on a terminal (step/total, loss, tokens/s, ETA), or into
// plain lines (one per ~5% of the steps, plus every eval/warning) when stdout is a pipe or a CI log.
import type { EngineEvent } from "./engine";

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "?";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${String(r).padStart(2, "0")}` : `${m}:${String(r).padStart(2, "0")}`;
}

function formatRate(tokensPerS: number): string {
  return tokensPerS >= 1000 ? `${(tokensPerS / 1000).toFixed(1)}k tok/s` : `${Math.round(tokensPerS)} tok/s`;
}

// The rate of the data trained on (data_tokens_per_s: rows without their padding documents); an engine from before
// that field gives row tokens.
export function stepLine(e: EngineEvent): string {
  const loss = typeof e.loss === "number" ? e.loss.toFixed(4) : "?";
  const rate = e.data_tokens_per_s ?? e.tokens_per_s ?? 0;
  return `step ${e.step}/${e.total_steps}  loss ${loss}  ${formatRate(rate)}  ETA ${formatDuration(e.eta_s)}`;
}

export function bar(done: number, total: number, width = 24): string {
  const filled = total > 0 ? Math.min(width, Math.round((done / total) * width)) : 0;
  return `[${"#".repeat(filled)}${".".repeat(width - filled)}]`;
}

const MAX_WARNINGS = 3;

export class ProgressRenderer {
  private lastPrintedStep = 0;
  private warnings = 0;
  private barShown = false;
  private readonly tty: boolean;
  private readonly out: NodeJS.WritableStream;

  private readonly quiet: boolean;

  // `quiet`: only warnings and errors (for chat, whose stdout is the reply).
  constructor(out: NodeJS.WritableStream & { isTTY?: boolean } = process.stdout, tty?: boolean, quiet = false) {
    this.out = out;
    this.quiet = quiet;
    this.tty = tty ?? (Boolean(out.isTTY) && !process.env.CI);
  }

  private line(text: string): void {
    if (this.barShown) { this.out.write("\r\x1b[K"); this.barShown = false; }
    this.out.write(text + "\n");
  }

  private barLine(text: string): void {
    this.out.write(`\r\x1b[K${text}`);
    this.barShown = true;
  }

  onEvent = (e: EngineEvent): void => {
    if (this.quiet && e.event !== "warning") return;
    switch (e.event) {
      case "start": {
        const extra = ["params", "trainable_params", "total_steps"].filter((k) => e[k] !== undefined).map((k) => `${k}=${e[k]}`);
        this.line(`engine ${e.command}: backend ${e.backend}, ${e.threads} threads, ${e.device}${extra.length ? "  " + extra.join(" ") : ""}`);
        break;
      }
      case "step": {
        if (this.tty) { this.barLine(`${bar(e.step, e.total_steps)} ${stepLine(e)}`); break; }
        const every = Math.max(1, Math.floor(e.total_steps / 20));
        if (e.step === 1 || e.step === e.total_steps || e.step - this.lastPrintedStep >= every) {
          this.lastPrintedStep = e.step;
          this.line(stepLine(e));
        }
        break;
      }
      case "progress": {
        const text = `${e.stage} ${e.done}/${e.total}${e.unit ? " " + e.unit : ""}${e.message ? "  " + e.message : ""}`;
        if (this.tty) this.barLine(`${bar(e.done, e.total)} ${text}`);
        else if (e.done === e.total) this.line(text);
        break;
      }
      case "eval": this.line(`eval @ step ${e.step}: loss ${Number(e.loss).toFixed(4)} (${e.tokens} tokens)`); break;
      case "checkpoint": this.line(`checkpoint @ step ${e.step}: ${e.path}`); break;
      // A quantizer may warn once per tensor: show the first few, count the rest.
      case "warning":
        if (++this.warnings <= MAX_WARNINGS) this.line(`warning: ${e.message}`);
        break;
      case "done":
        if (this.barShown) { this.out.write("\n"); this.barShown = false; }
        if (this.warnings > MAX_WARNINGS) this.line(`(${this.warnings - MAX_WARNINGS} more warnings)`);
        break;
      default: break;
    }
  };
}
