// adapter-ranks.ts — data-parallel training for the adapter stage (docs/multi-gpu.md): the same train job run as
// one engine process per GPU (recipe engine.gpus), ranks told apart by the environment.
//
//   one host:     ranks 0…N−1 here; rank 0 listens on 127.0.0.1 and writes its address to a fresh folder under
//                 out/.jobs/, where the others read it (the NCCL unique id then travels over that connection).
//   several hosts: every host runs `nx run <recipe>:adapter` with NXFT_NNODES, NXFT_NODE_RANK, NXFT_MASTER_ADDR and
//                 NXFT_MASTER_PORT (torchrun's nnodes / node_rank / master_addr / master_port); host k starts ranks
//                 k·N … k·N+N−1, and rank 0 (on the host with NXFT_NODE_RANK=0) listens on MASTER_PORT.
// Local rank 0 of every host reports progress and writes that host's adapter (every rank holds the same weights).
// When any rank fails, the others are killed and the stage fails with the failing rank's own message.
import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { EngineFailure, ensureEngine, runEngine, type EngineEvent } from "../engine";
import { ProgressRenderer } from "../progress";
import type { StageContext } from "../stage-context";

export interface RankPlan {
  world: number;       // ranks over all hosts
  local: number;       // ranks (GPUs) on this host
  rankOffset: number;  // global rank of this host's local rank 0
  master?: { addr: string; port: number };   // several hosts
}

// How many ranks engine.gpus asks for, here and over all hosts. A plan with world 1 means: one process, as before.
export async function rankPlan(ctx: StageContext): Promise<RankPlan> {
  const { gpus = 1, backend } = ctx.recipe.engine;
  let local: number;
  if (gpus === "all") {
    if (backend === "cpu") throw new Error(`${ctx.recipeFile}: engine.gpus: "all" counts GPUs, but engine.backend is "cpu"; give a number of processes`);
    local = Math.max(1, await countGpus());
    if (ctx.recipe.train.batch_size % local !== 0) {
      throw new Error(`${ctx.recipeFile}: engine.gpus: "all" is ${local} GPUs here, and train.batch_size (${ctx.recipe.train.batch_size}) is not a multiple of it`);
    }
  } else {
    local = gpus;
  }
  const nnodes = envInt("NXFT_NNODES", 1, 1), nodeRank = envInt("NXFT_NODE_RANK", 0, 0);
  if (nodeRank >= nnodes) throw new Error(`NXFT_NODE_RANK=${nodeRank} must be below NXFT_NNODES=${nnodes}`);
  if (nnodes === 1) return { world: local, local, rankOffset: 0 };
  const addr = process.env.NXFT_MASTER_ADDR, port = envInt("NXFT_MASTER_PORT", 0, 1);
  if (!addr || !port) throw new Error(`NXFT_NNODES=${nnodes}: set NXFT_MASTER_ADDR and NXFT_MASTER_PORT (where the host with NXFT_NODE_RANK=0 listens)`);
  return { world: nnodes * local, local, rankOffset: nodeRank * local, master: { addr, port } };
}

// Runs `job` (the adapter stage's train job) as this host's ranks of `plan`; resolves with local rank 0's summary.
export async function trainRanks(ctx: StageContext, job: Record<string, any>, plan: RankPlan,
                                 onEvent: (e: EngineEvent) => void): Promise<Record<string, any>> {
  const binary = await ensureEngine(ctx.workspaceRoot, ctx.log);
  const jobsDir = join(ctx.projectDir, "out", ".jobs");
  mkdirSync(jobsDir, { recursive: true });
  // A fresh folder per run: an address file left by an earlier run must never be read.
  const rendezvous = plan.master ? undefined : mkdtempSync(join(jobsDir, "train-rendezvous-"));
  const dist = { world_size: plan.world, ...(rendezvous ? { rendezvous } : { master_addr: plan.master!.addr, master_port: plan.master!.port }) };
  // CPU ranks share this host's cores (the engine's results do not depend on its thread count).
  const threads = Math.max(1, Math.floor((job.threads || availableParallelism()) / plan.local));
  ctx.log(`adapter: data-parallel over ${plan.world} rank(s), ${plan.local} on this host (ranks ${plan.rankOffset}…${plan.rankOffset + plan.local - 1}), ` +
          `${job.train.batch_size / plan.world} row(s) of each micro-batch per rank`);
  const renderer = new ProgressRenderer(process.stdout);
  const cancel = new AbortController();
  const runs = Array.from({ length: plan.local }, async (_, local) => {
    const rank = plan.rankOffset + local;
    try {
      return await runEngine(binary, "train", { ...job, threads, dist }, join(jobsDir, `train.rank-${rank}.json`), (e) => {
        if (local === 0) { renderer.onEvent(e); onEvent(e); }
      }, { env: { NXFT_RANK: String(rank), NXFT_LOCAL_RANK: String(local), NXFT_CUDA_DEVICE: String(local) }, cancel: cancel.signal });
    } catch (e) {
      // A rank that failed on its own ends the run for all at once (they would stop on their own, this is
      // quicker). One that stopped because a peer ended (dist.peer) leaves that peer time to report its own error,
      // which a kill could cut off.
      if ((e as EngineFailure).field === "dist.peer") setTimeout(() => cancel.abort(), 30_000).unref();
      else cancel.abort();
      throw Object.assign(e as Error, { rank });
    }
  });
  const results = await Promise.allSettled(runs);
  if (rendezvous) rmSync(rendezvous, { recursive: true, force: true });
  const failures = results.flatMap((r) => (r.status === "rejected" ? [r.reason as Error & { rank: number; field?: string }] : []));
  if (failures.length > 0) {
    // The rank that failed on its own, not one that stopped because of it (dist.peer) or that we killed.
    const own = failures.find((f) => f.field !== "dist.peer" && !/killed by SIGTERM/.test(f.message)) ?? failures[0];
    throw new EngineFailure(`rank ${own.rank} of ${plan.world}: ${own.message}`, own.field);
  }
  return (results[0] as PromiseFulfilledResult<Record<string, any>>).value;
}

// GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else `nvidia-smi -L`; 0 when neither tells.
function countGpus(): Promise<number> {
  const visible = process.env.CUDA_VISIBLE_DEVICES;
  if (visible !== undefined) return Promise.resolve(visible.split(",").filter((d) => d.trim() !== "" && d.trim() !== "-1").length);
  return new Promise((done) => execFile("nvidia-smi", ["-L"], (err, stdout) => done(err ? 0 : stdout.split("\n").filter((l) => l.startsWith("GPU ")).length)));
}

function envInt(name: string, def: number, min: number): number {
  const v = process.env[name];
  if (v === undefined || v === "") return def;
  if (!/^\d+$/.test(v) || Number(v) < min) throw new Error(`${name}=${v}: expected an integer ≥ ${min}`);
  return Number(v);
}
