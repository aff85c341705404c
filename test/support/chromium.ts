// chromium.ts — screenshots of local HTML files with Debian's headless Chromium (.ci/run installs it), with every
// host name unresolvable, so a page that needs the network shows it.
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export function findChromium(): string | undefined {
  if (process.env.CHROMIUM) return process.env.CHROMIUM;
  for (const name of ["chromium", "chromium-browser", "google-chrome"]) {
    try { return execFileSync("sh", ["-c", `command -v ${name}`], { encoding: "utf8" }).trim() || undefined; } catch { /* next */ }
  }
  return undefined;
}

export function screenshot(chromium: string, htmlFile: string, pngFile: string, width: number, height: number): void {
  const profile = mkdtempSync(join(tmpdir(), "nxft-chromium-"));
  try {
    const r = spawnSync(chromium, [
      "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--disable-extensions",
      `--user-data-dir=${profile}`, "--host-resolver-rules=MAP * ~NOTFOUND", `--window-size=${width},${height}`,
      `--screenshot=${pngFile}`, `file://${htmlFile}`,
    ], { encoding: "utf8", timeout: 120_000 });
    if (r.status !== 0) throw new Error(`chromium exited with ${r.status ?? r.signal}: ${r.stderr.slice(-2000)}`);
  } finally {
    rmSync(profile, { recursive: true, force: true });
  }
}
