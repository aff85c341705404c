// collective.cpp — reading the "dist" job settings (and the environment) and choosing the collective.
#include "dist/collective.h"
#include <cstdlib>
#include <string>

namespace nxft {

namespace {

// NXFT_<name> as an integer, or `def` when unset; a malformed value is an error naming the variable.
int64_t env_int(const char* name, int64_t def) {
  const char* v = std::getenv(name);
  if (!v || !*v) return def;
  char* end = nullptr;
  const long long x = std::strtoll(v, &end, 10);
  if (*end) throw EngineError(std::string("environment ") + name + "=\"" + v + "\": not an integer", "", name);
  return int64_t(x);
}

std::string env_str(const char* name, const std::string& def) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : def;
}

}  // namespace

DistConfig read_dist_config(JobReader& job) {
  DistConfig c;
  std::unique_ptr<JobReader> d;
  const bool in_job = job.opt_sub("dist", &d);
  // The job's value wins; the environment fills what the job leaves out.
  auto integer = [&](const char* key, const char* env, int64_t lo, int64_t hi, int64_t def) {
    const int64_t v = in_job && d->has(key) ? d->integer_in(key, lo, hi, def) : env_int(env, def);
    if (v < lo || v > hi)
      throw EngineError(std::string(env) + "=" + std::to_string(v) + ": must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]",
                        "", env);
    return v;
  };
  c.world = int(integer("world_size", "NXFT_WORLD_SIZE", 1, 4096, 1));
  c.rank = int(integer("rank", "NXFT_RANK", 0, 4095, 0));
  c.local_rank = int(integer("local_rank", "NXFT_LOCAL_RANK", 0, 4095, c.rank));
  c.master_port = int(integer("master_port", "NXFT_MASTER_PORT", 0, 65535, 0));
  c.timeout_s = in_job && d->has("timeout_s") ? d->num_in("timeout_s", 1, 1e7, 600)
                                              : double(env_int("NXFT_DIST_TIMEOUT_S", 600));
  c.rendezvous_dir = in_job && d->has("rendezvous") ? d->path("rendezvous") : env_str("NXFT_RENDEZVOUS", "");
  c.master_addr = in_job && d->has("master_addr") ? d->str("master_addr") : env_str("NXFT_MASTER_ADDR", "");
  c.collective = in_job && d->has("collective") ? d->choice("collective", {"auto", "cpu", "nccl"}, "auto")
                                                : env_str("NXFT_COLLECTIVE", "auto");
  if (in_job) d->finish();
  const std::string where = in_job ? job.job_path() + ": dist." : "environment NXFT_";
  if (c.rank >= c.world)
    throw EngineError(where + "rank: " + std::to_string(c.rank) + " is outside the world of " + std::to_string(c.world) + " ranks",
                      job.job_path(), "dist.rank");
  if (c.collective != "auto" && c.collective != "cpu" && c.collective != "nccl")
    throw EngineError("NXFT_COLLECTIVE=" + c.collective + ": expected auto, cpu or nccl", "", "NXFT_COLLECTIVE");
  if (!c.master_addr.empty() && c.master_port == 0)
    throw EngineError(where + "master_port: required with master_addr", job.job_path(), "dist.master_port");
  return c;
}

std::unique_ptr<Collective> make_collective(const DistConfig& cfg, Backend& be, const std::string& fingerprint) {
  std::string which = cfg.collective;
  if (which == "auto") which = be.name() == "cuda" ? "nccl" : "cpu";
#if defined(NXFT_HAVE_NCCL)
  if (which == "nccl") {
    if (be.name() != "cuda") throw EngineError("dist.collective \"nccl\" needs the CUDA backend (the job runs on " + be.name() + ")", "", "dist.collective");
    return make_nccl_collective(cfg, be, fingerprint);
  }
#else
  if (which == "nccl") {
    if (cfg.collective == "nccl")
      throw EngineError("dist.collective \"nccl\": this engine was built without NCCL (configure with -DNXFT_NCCL_DIR=<nvidia/nccl>)", "",
                        "dist.collective");
    emit_warning("this engine was built without NCCL: the ranks exchange gradients through host memory (the cpu collective)");
  }
#endif
  return make_cpu_collective(cfg, be, fingerprint);
}

}  // namespace nxft
