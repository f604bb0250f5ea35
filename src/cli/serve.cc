// `keel serve`: the HTTP service until SIGTERM or SIGINT, then a graceful
// drain (see server/server.h).
#include <signal.h>

#include <cstdio>

#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "base/byte_size.h"
#include "base/duration.h"
#include "base/file.h"
#include "cli/commands.h"
#include "server/server.h"

namespace keel::cli {

namespace {

// CLI11 check+conversion of a duration option into milliseconds.
CLI::Validator Millis(std::chrono::milliseconds* out) {
  return CLI::Validator(
      [out](const std::string& text) -> std::string {
        auto d = ParseDuration(text);
        if (!d) return d.error().message;
        *out = std::chrono::duration_cast<std::chrono::milliseconds>(*d);
        return "";
      },
      "DURATION");
}

// CLI11 check+conversion of a positive size ("4GiB") into bytes.
CLI::Validator Bytes(uint64_t* out) {
  return CLI::Validator(
      [out](const std::string& text) -> std::string {
        auto bytes = ParseByteSize(text);
        if (!bytes) return bytes.error().message;
        if (*bytes == 0) return "the size must be above 0";
        *out = *bytes;
        return "";
      },
      "SIZE");
}

CLI::Validator EngineChoice(EngineKind* out) {
  return CLI::Validator(
      [out](const std::string& text) -> std::string {
        auto kind = ParseEngineKind(text);
        if (!kind) return kind.error().message;
        *out = *kind;
        return "";
      },
      "spidermonkey|wasmtime");
}

Result<std::string> ReadToken(const std::string& path) {
  auto bytes = ReadFile(path);
  if (!bytes) return MakeError(bytes.error());
  std::string token(bytes->begin(), bytes->end());
  while (!token.empty() && (token.back() == '\n' || token.back() == '\r' || token.back() == ' ')) token.pop_back();
  if (token.empty()) return MakeError(ErrorCode::kInvalidArgument, "the token file " + path + " is empty");
  if (token.find_first_of(" \t\r\n") != std::string::npos) {
    return MakeError(ErrorCode::kInvalidArgument, "the token in " + path + " holds whitespace");
  }
  return token;
}

}  // namespace

void AddCommitLanesOption(CLI::App& cmd, size_t& lanes) {
  cmd.add_option("--commit-lanes", lanes,
                 "PostgreSQL store: write connections, whose transactions overlap (default 4)")
      ->check(CLI::Range(1, 64));
}

CLI::App* AddServeCommand(CLI::App& app, ServeArgs& args) {
  server::ServerOptions& o = args.options;
  auto* cmd = app.add_subcommand("serve", "Serve the HTTP API, metrics and status page until SIGTERM");
  cmd->add_option("--listen", o.listen, "ADDR:PORT (non-loopback needs --token-file)")->capture_default_str();
  cmd->add_option("--data", o.data_dir, "Data directory: uploaded modules and the SQLite job store")->required();
  cmd->add_option("--store", o.store, "Job store: a directory or postgresql:// URL (default: --data)");
  AddCommitLanesOption(*cmd, o.commit_lanes);
  cmd->add_option("--node-name", o.node_name, "This node's name in the cluster (default: hostname:port)");
  cmd->add_option("--lease", "Job lease once started, and how long a silent node counts as alive (30s)")
      ->check(Millis(&o.lease));
  cmd->add_option("--workers", o.workers, "WebAssembly worker threads (default: one per core)");
  cmd->add_option("--engine", "WebAssembly engine: spidermonkey (default) or wasmtime")
      ->check(EngineChoice(&o.engine));
  cmd->add_option("--memory-budget",
                  "Linear memory all instances may hold, e.g. 4GiB (default: half the physical memory)")
      ->check(Bytes(&o.memory_budget_bytes));
  cmd->add_option("--token-file", args.token_file, "File holding the bearer token every /v1 route and /metrics need");
  cmd->add_flag("--public-metrics", o.public_metrics, "With --token-file: serve /metrics without the token");
  cmd->add_option("--modules", o.module_dirs, "Load every *.wasm here under its stem (repeatable; skips hostile_*)");
  cmd->add_option("--io-threads", o.io_threads, "HTTP threads")->capture_default_str();
  cmd->add_option("--instances", o.instances, "Instances per module (default: one per worker)");
  cmd->add_option("--max-queue", o.max_queue, "Calls queued per module before 429")->capture_default_str();
  cmd->add_option("--call-timeout", "Default deadline of a synchronous call (5s)")
      ->check(Millis(&o.default_call_timeout));
  cmd->add_option("--max-call-timeout", "Largest ?timeout= honoured (30s)")->check(Millis(&o.max_call_timeout));
  cmd->add_option("--max-job-timeout", "Largest timeout_ms of a job (15m)")->check(Millis(&o.max_job_timeout));
  cmd->add_option("--max-body", o.max_body_bytes, "Request body limit in bytes")->capture_default_str();
  cmd->add_option("--max-module", o.max_module_bytes, "Module upload limit in bytes")->capture_default_str();
  cmd->add_option("--max-header", o.max_header_bytes, "Request header limit in bytes")->capture_default_str();
  cmd->add_option("--max-connections", o.max_connections, "Open connections")->capture_default_str();
  cmd->add_option("--idle-timeout", "Keep-alive idle limit (60s)")->check(Millis(&o.idle_timeout));
  cmd->add_option("--drain-grace", "On SIGTERM, time calls in flight get to finish (10s)")
      ->check(Millis(&o.drain_grace));
  return cmd;
}

int Serve(const ServeArgs& args) {
  spdlog::set_default_logger(spdlog::stderr_color_mt("keel"));
  // Signals are taken by sigwait below; every thread started from here on
  // inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  // A client that goes away must not kill the process on write.
  signal(SIGPIPE, SIG_IGN);

  server::ServerOptions options = args.options;
  if (!args.token_file.empty()) {
    auto token = ReadToken(args.token_file);
    if (!token) {
      std::fprintf(stderr, "keel: %s\n", token.error().message.c_str());
      return kExitUsage;
    }
    options.token = std::move(*token);
  }
  auto server = server::Server::Start(std::move(options));
  if (!server) {
    std::fprintf(stderr, "keel: %s\n", server.error().ToString().c_str());
    return server.error().code == ErrorCode::kInvalidArgument ? kExitUsage : kExitFailure;
  }
  std::printf("keel serve: listening on http://%s\n", (*server)->address().c_str());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&signals, &sig);
  spdlog::info("signal {}: draining for up to {} ms", sig, args.options.drain_grace.count());
  (*server)->Shutdown(args.options.drain_grace);
  return kExitOk;
}

}  // namespace keel::cli
