// hub-publish.ts — push a fine-tune's files to a Hugging Face Hub model repo with @huggingface/hub: create the repo
// (an existing one is fine), then one commit with every file (large files through the Hub's LFS upload). The token
// goes only into the client's Authorization header; errors are rewritten so they never carry it.
import { openAsBlob } from "node:fs";

export interface PublishFile { path: string; local: string; size: number }

export interface PublishOptions {
  repo: string;
  branch: string;
  private: boolean;
  token: string;
  endpoint: string;
  title: string;
  log: (line: string) => void;
}

export class PublishError extends Error {}

export async function pushToHub(files: PublishFile[], o: PublishOptions): Promise<{ commitUrl?: string; commitOid?: string }> {
  const hub = await import("@huggingface/hub");
  const credentials = { accessToken: o.token };
  const fail = (what: string, e: any): never => {
    const cause = e?.cause?.code ?? e?.cause?.message;
    const msg = String(e?.message ?? e).split(o.token).join("***");
    if (e instanceof TypeError && /fetch failed/.test(msg)) {
      throw new PublishError(`${what}: cannot reach the Hugging Face Hub at ${o.endpoint}${cause ? ` (${cause})` : ""}; ` +
        `check the network, or HF_ENDPOINT for a mirror`);
    }
    const status = e?.statusCode ? ` (HTTP ${e.statusCode})` : "";
    const hint = e?.statusCode === 401 || e?.statusCode === 403 ? ": HF_TOKEN must be a token with write access to " + o.repo : "";
    throw new PublishError(`${what}${status}: ${msg}${hint}`);
  };
  try {
    await hub.createRepo({ repo: { type: "model", name: o.repo }, private: o.private, hubUrl: o.endpoint, credentials });
    o.log(`publish: created ${o.private ? "private" : "public"} repo ${o.repo}`);
  } catch (e: any) {
    if (e?.statusCode !== 409) fail(`creating ${o.repo}`, e); // 409: it exists already, push to it
  }
  const total = files.reduce((s, f) => s + f.size, 0);
  o.log(`publish: uploading ${files.length} files (${(total / 1e6).toFixed(1)} MB) to ${o.repo}@${o.branch}`);
  const blobs = await Promise.all(files.map(async (f) => ({ path: f.path, content: await openAsBlob(f.local) })));
  let lastPercent = -1;
  try {
    const commit = hub.commitIter({
      repo: { type: "model", name: o.repo }, branch: o.branch, hubUrl: o.endpoint, credentials, title: o.title,
      // Plain LFS transfer: one PUT per large file, no Xet chunking client (works against mirrors and test servers).
      useXet: false,
      operations: blobs.map((b) => ({ operation: "addOrUpdate" as const, path: b.path, content: b.content })),
    });
    const progress = new Map<string, number>();
    for (;;) {
      const step = await commit.next();
      if (step.done) return { commitUrl: step.value?.commit.url, commitOid: step.value?.commit.oid };
      const ev = step.value;
      if (ev.event === "phase") o.log(`publish: ${ev.phase}`);
      else if (ev.state === "uploading") {
        progress.set(ev.path, ev.progress);
        const done = files.reduce((s, f) => s + f.size * (progress.get(f.path) ?? 0), 0);
        const percent = Math.floor((100 * done) / Math.max(total, 1) / 10) * 10;
        if (percent > lastPercent) { lastPercent = percent; o.log(`publish: ${percent}% uploaded`); }
      }
    }
  } catch (e) {
    return fail(`pushing to ${o.repo}`, e);
  }
}
