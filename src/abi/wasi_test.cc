// WASI preview1 tested with real C programs (tests/wasi/*.c, built with
// wasi-libc) on the real engine and real host resources.
#include "abi/wasi.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>

#include "abi/wasi_internal.h"
#include "abi/wasi_path.h"
#include "engine/engine.h"
#include "engine/module_info.h"

namespace keel::abi {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;
using std::chrono::steady_clock;

std::vector<uint8_t> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

std::string ReadText(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// What a program run ended with.
struct Outcome {
  Result<void> status;           // an Error other than proc_exit
  std::optional<int> exit_code;  // 0 when _start returned
  std::string out;
  std::string err;
  bool out_truncated = false;
};

// Every test runs on every engine of the build.
class WasiTest : public ::testing::TestWithParam<engine::EngineKind> {
 protected:
  static void SetUpTestSuite() {
    auto linker = std::make_shared<engine::Linker>();
    AddWasiToLinker(*linker);
    linker_ = linker;
  }

  void SetUp() override {
    auto ctx = engine().NewContext();
    ASSERT_TRUE(ctx) << ctx.error().ToString();
    ctx_ = std::move(*ctx);
  }

  void TearDown() override {
    ctx_.reset();
    if (!root_.empty()) fs::remove_all(root_);
  }

  engine::Engine& engine() { return **engine::GetEngine(GetParam()); }

  std::shared_ptr<const engine::Module> Compile(const std::string& name) {
    auto bytes = ReadFile(std::string(KEEL_GUEST_DIR) + "/" + name + ".wasm");
    EXPECT_FALSE(bytes.empty()) << name;
    auto module = engine().Compile(bytes);
    EXPECT_TRUE(module) << module.error().ToString();
    return module ? *module : nullptr;
  }

  // Runs `guest`'s _start with `config`. `during`, if given, runs on another
  // thread while the guest runs, with a way to interrupt it.
  Outcome Run(const std::string& guest, const WasiConfig& config,
              std::function<void(std::function<void()> interrupt)> during = nullptr) {
    Outcome outcome;
    auto module = Compile(guest);
    auto wasi = WasiContext::Create(config);
    if (!module || !wasi) {
      outcome.status =
          tl::unexpected(wasi ? Error(ErrorCode::kInternal, "no module") : wasi.error());
      return outcome;
    }
    auto instance = ctx_->Instantiate(module, linker_, std::move(*wasi), ++tag_);
    if (!instance) {
      outcome.status = tl::unexpected(instance.error());
      return outcome;
    }
    const uint64_t tag = ++tag_;
    std::thread helper;
    if (during) {
      auto interrupter = ctx_->interrupter();
      helper = std::thread([during, interrupter, tag] {
        during([interrupter, tag] { interrupter->Request(tag); });
      });
    }
    auto result = (*instance)->Invoke("_start", {}, tag);
    if (helper.joinable()) helper.join();
    auto* state = dynamic_cast<WasiContext*>((*instance)->host_state());
    outcome.out = std::string(state->captured_stdout());
    outcome.err = std::string(state->captured_stderr());
    outcome.out_truncated = state->stdout_truncated();
    if (result) {
      outcome.exit_code = 0;
    } else if (result.error().code == ErrorCode::kTrap && result.error().trap == TrapKind::kExit) {
      outcome.exit_code = result.error().exit_code;
      EXPECT_EQ(state->exit_code(), result.error().exit_code);
    } else {
      outcome.status = tl::unexpected(result.error());
    }
    return outcome;
  }

  static WasiConfig Captured(std::vector<std::string> args) {
    WasiConfig config;
    config.args = std::move(args);
    config.stdout_io = WasiStdio::Capture();
    config.stderr_io = WasiStdio::Capture();
    return config;
  }

  // A scratch tree: rw/ (preopen /sandbox), ro/ (preopen /ro, read-only)
  // and outside/ holding what no guest may reach.
  WasiConfig FsConfig(std::vector<std::string> args) {
    char tmpl[] = "/tmp/keel_wasi_XXXXXX";
    EXPECT_NE(mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    fs::create_directories(root_ / "rw");
    fs::create_directories(root_ / "ro" / "d");
    fs::create_directories(root_ / "outside");
    std::ofstream(root_ / "ro" / "test.txt") << "read only test file\n";
    std::ofstream(root_ / "ro" / "d" / "inner.txt") << "inner";
    std::ofstream(root_ / "outside" / "secret.txt") << "secret";
    fs::create_symlink("/etc", root_ / "rw" / "abs_link");
    fs::create_symlink("../outside", root_ / "rw" / "out_link");
    fs::create_symlink("../outside/secret.txt", root_ / "rw" / "esc");
    WasiConfig config = Captured(std::move(args));
    config.preopens = {{(root_ / "rw").string(), "/sandbox", false},
                       {(root_ / "ro").string(), "/ro", true}};
    return config;
  }

  // Nothing outside the preopens changed, and the read-only one is intact.
  void ExpectHostUntouched() {
    EXPECT_EQ(ReadText(root_ / "outside" / "secret.txt"), "secret");
    std::vector<std::string> outside, ro;
    for (const auto& e : fs::directory_iterator(root_ / "outside")) {
      outside.push_back(e.path().filename());
    }
    for (const auto& e : fs::recursive_directory_iterator(root_ / "ro")) {
      ro.push_back(fs::relative(e.path(), root_ / "ro"));
    }
    std::sort(ro.begin(), ro.end());
    EXPECT_EQ(outside, std::vector<std::string>{"secret.txt"});
    EXPECT_EQ(ro, (std::vector<std::string>{"d", "d/inner.txt", "test.txt"}));
    EXPECT_EQ(ReadText(root_ / "ro" / "test.txt"), "read only test file\n");
    EXPECT_FALSE(fs::exists(root_ / "planted"));
    EXPECT_FALSE(fs::exists(root_ / "evil"));
  }

  static inline std::shared_ptr<const engine::Linker> linker_;
  std::unique_ptr<engine::Context> ctx_;
  uint64_t tag_ = 0;
  fs::path root_;
};

// A pipe closed on destruction.
struct Pipe {
  Pipe() { EXPECT_EQ(pipe2(fds, O_CLOEXEC), 0); }
  ~Pipe() {
    CloseRead();
    CloseWrite();
  }
  void CloseRead() {
    if (fds[0] >= 0) close(fds[0]);
    fds[0] = -1;
  }
  void CloseWrite() {
    if (fds[1] >= 0) close(fds[1]);
    fds[1] = -1;
  }
  int fds[2] = {-1, -1};
};

TEST_P(WasiTest, LinkerDefinesEveryPreview1FunctionWithItsSignature) {
  constexpr ValType I = ValType::kI32, L = ValType::kI64;
  const std::vector<std::pair<std::string, FuncType>> expected = {
      {"args_get", {{I, I}, {I}}},
      {"args_sizes_get", {{I, I}, {I}}},
      {"environ_get", {{I, I}, {I}}},
      {"environ_sizes_get", {{I, I}, {I}}},
      {"clock_res_get", {{I, I}, {I}}},
      {"clock_time_get", {{I, L, I}, {I}}},
      {"fd_advise", {{I, L, L, I}, {I}}},
      {"fd_allocate", {{I, L, L}, {I}}},
      {"fd_close", {{I}, {I}}},
      {"fd_datasync", {{I}, {I}}},
      {"fd_fdstat_get", {{I, I}, {I}}},
      {"fd_fdstat_set_flags", {{I, I}, {I}}},
      {"fd_fdstat_set_rights", {{I, L, L}, {I}}},
      {"fd_filestat_get", {{I, I}, {I}}},
      {"fd_filestat_set_size", {{I, L}, {I}}},
      {"fd_filestat_set_times", {{I, L, L, I}, {I}}},
      {"fd_pread", {{I, I, I, L, I}, {I}}},
      {"fd_prestat_get", {{I, I}, {I}}},
      {"fd_prestat_dir_name", {{I, I, I}, {I}}},
      {"fd_pwrite", {{I, I, I, L, I}, {I}}},
      {"fd_read", {{I, I, I, I}, {I}}},
      {"fd_readdir", {{I, I, I, L, I}, {I}}},
      {"fd_renumber", {{I, I}, {I}}},
      {"fd_seek", {{I, L, I, I}, {I}}},
      {"fd_sync", {{I}, {I}}},
      {"fd_tell", {{I, I}, {I}}},
      {"fd_write", {{I, I, I, I}, {I}}},
      {"path_create_directory", {{I, I, I}, {I}}},
      {"path_filestat_get", {{I, I, I, I, I}, {I}}},
      {"path_filestat_set_times", {{I, I, I, I, L, L, I}, {I}}},
      {"path_link", {{I, I, I, I, I, I, I}, {I}}},
      {"path_open", {{I, I, I, I, I, L, L, I, I}, {I}}},
      {"path_readlink", {{I, I, I, I, I, I}, {I}}},
      {"path_remove_directory", {{I, I, I}, {I}}},
      {"path_rename", {{I, I, I, I, I, I}, {I}}},
      {"path_symlink", {{I, I, I, I, I}, {I}}},
      {"path_unlink_file", {{I, I, I}, {I}}},
      {"poll_oneoff", {{I, I, I, I}, {I}}},
      {"proc_exit", {{I}, {}}},
      {"proc_raise", {{I}, {I}}},
      {"sched_yield", {{}, {I}}},
      {"random_get", {{I, I}, {I}}},
      {"sock_accept", {{I, I, I}, {I}}},
      {"sock_recv", {{I, I, I, I, I, I}, {I}}},
      {"sock_send", {{I, I, I, I, I}, {I}}},
      {"sock_shutdown", {{I, I}, {I}}},
  };
  for (const auto& [name, type] : expected) {
    const auto* entry = linker_->Find("wasi_snapshot_preview1", name);
    ASSERT_NE(entry, nullptr) << name;
    EXPECT_EQ(entry->type, type) << name << ": " << entry->type.ToString();
  }
  // And what wasi-libc and the test programs import matches exactly.
  for (const char* guest : {"wasi_basics", "wasi_fs"}) {
    auto info =
        engine::ReadModuleInfo(ReadFile(std::string(KEEL_GUEST_DIR) + "/" + guest + ".wasm"));
    ASSERT_TRUE(info) << info.error().ToString();
    EXPECT_TRUE(engine::CheckImports(*info, linker_.get())) << guest;
  }
}

TEST_P(WasiTest, ArgsEnvClocksRandomStdioPollSocketsAndBadPointers) {
  WasiConfig config = Captured({"wasi_basics", "basics",
                                "\xce\xb1-\xce\xb2"
                                "eta",
                                ""});
  config.env = {{"KEEL_A", "1"}, {"EMPTY", ""}};
  config.stdin_io = WasiStdio::Input("hello stdin\n");
  Outcome o = Run("wasi_basics", config);
  ASSERT_TRUE(o.status) << o.status.error().ToString();
  EXPECT_EQ(o.exit_code, 0) << o.err;
  EXPECT_NE(o.out.find("basics: "), std::string::npos) << o.out;
  EXPECT_NE(o.out.find(" 0 failed"), std::string::npos) << o.out;
  // The program's own writes to stderr, and no failure reports.
  EXPECT_EQ(o.err, "to-stderr\nvia-renumber\n");
}

TEST_P(WasiTest, ProcExitEndsTheCallWithItsCode) {
  Outcome o = Run("wasi_basics", Captured({"wasi_basics", "exit", "7"}));
  ASSERT_TRUE(o.status) << o.status.error().ToString();
  EXPECT_EQ(o.exit_code, 7);
  EXPECT_EQ(o.out, "bye\n");  // libc flushed before exiting

  o = Run("wasi_basics", Captured({"wasi_basics", "raw_exit", "0"}));
  ASSERT_TRUE(o.status) << o.status.error().ToString();
  EXPECT_EQ(o.exit_code, 0);
}

TEST_P(WasiTest, CapturedOutputIsCappedAndMarkedTruncated) {
  WasiConfig config = Captured({"wasi_basics", "capture"});
  config.stdout_io = WasiStdio::Capture(100);
  Outcome o = Run("wasi_basics", config);
  EXPECT_EQ(o.exit_code, 0);
  std::string expected;
  for (int i = 0; i < 10; ++i) expected += "0123456789";
  EXPECT_EQ(o.out, expected);
  EXPECT_TRUE(o.out_truncated);
}

TEST_P(WasiTest, NullStdioReadsEofAndDiscardsWrites) {
  WasiConfig config;
  config.args = {"wasi_basics", "cat"};
  Outcome o = Run("wasi_basics", config);
  ASSERT_TRUE(o.status) << o.status.error().ToString();
  EXPECT_EQ(o.exit_code, 0);
  EXPECT_EQ(o.out, "");
}

TEST_P(WasiTest, InheritedPipesCarryStdinAndStdout) {
  Pipe in, out;
  const std::string text(100000, 'k');  // more than a pipe holds: both sides block
  std::thread writer([&] {
    size_t done = 0;
    while (done < text.size()) {
      ssize_t n = write(in.fds[1], text.data() + done, text.size() - done);
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
    in.CloseWrite();
  });
  std::string received;
  std::thread reader([&] {
    char buf[4096];
    ssize_t n;
    while ((n = read(out.fds[0], buf, sizeof(buf))) > 0)
      received.append(buf, static_cast<size_t>(n));
  });
  WasiConfig config;
  config.args = {"wasi_basics", "cat"};
  config.stdin_io = WasiStdio::Inherit(in.fds[0]);
  config.stdout_io = WasiStdio::Inherit(out.fds[1]);
  Outcome o = Run("wasi_basics", config);
  out.CloseWrite();  // the instance's copy is gone with it
  writer.join();
  reader.join();
  ASSERT_TRUE(o.status) << o.status.error().ToString();
  EXPECT_EQ(o.exit_code, 0);
  EXPECT_EQ(received.size(), text.size());
  EXPECT_EQ(received, text);
}

TEST_P(WasiTest, PollSeesAPipeReadableAndNonblockingReadsSayAgain) {
  Pipe in;
  ASSERT_EQ(write(in.fds[1], "ping", 4), 4);
  WasiConfig config = Captured({"wasi_basics", "poll_stdin"});
  config.stdin_io = WasiStdio::Inherit(in.fds[0]);
  Outcome o = Run("wasi_basics", config);
  ASSERT_TRUE(o.status) << o.status.error().ToString();
  EXPECT_EQ(o.exit_code, 0) << o.err;
}

TEST_P(WasiTest, WritingToABrokenPipeIsEpipeNotSigpipe) {
  Pipe out;
  out.CloseRead();
  WasiConfig config;
  config.args = {"wasi_basics", "write_until_error"};
  config.stdout_io = WasiStdio::Inherit(out.fds[1]);
  Outcome o = Run("wasi_basics", config);
  ASSERT_TRUE(o.status) << o.status.error().ToString();
  EXPECT_EQ(o.exit_code, wasi::kPipe);
}

TEST_P(WasiTest, InterruptWakesASleepingGuest) {
  const auto start = steady_clock::now();
  Outcome o = Run("wasi_basics", Captured({"wasi_basics", "sleep"}), [](auto interrupt) {
    std::this_thread::sleep_for(milliseconds(200));
    interrupt();
  });
  const auto elapsed = steady_clock::now() - start;
  ASSERT_FALSE(o.status);
  EXPECT_EQ(o.status.error().code, ErrorCode::kInterrupted) << o.status.error().ToString();
  EXPECT_EQ(o.out, "sleeping\n");
  EXPECT_GE(elapsed, milliseconds(200));
  EXPECT_LT(elapsed, milliseconds(5000));
}

TEST_P(WasiTest, InterruptWakesAGuestBlockedReadingStdin) {
  Pipe in;  // never written, never closed while the guest runs
  WasiConfig config = Captured({"wasi_basics", "cat"});
  config.stdin_io = WasiStdio::Inherit(in.fds[0]);
  const auto start = steady_clock::now();
  Outcome o = Run("wasi_basics", config, [](auto interrupt) {
    std::this_thread::sleep_for(milliseconds(200));
    interrupt();
  });
  const auto elapsed = steady_clock::now() - start;
  ASSERT_FALSE(o.status);
  EXPECT_EQ(o.status.error().code, ErrorCode::kInterrupted) << o.status.error().ToString();
  EXPECT_LT(elapsed, milliseconds(5000));
}

TEST_P(WasiTest, FilesystemInPreopensAndEveryRefusal) {
  Outcome o = Run("wasi_fs", FsConfig({"wasi_fs", "fs"}));
  ASSERT_TRUE(o.status) << o.status.error().ToString();
  EXPECT_EQ(o.exit_code, 0) << o.err;
  EXPECT_NE(o.out.find(" 0 failed"), std::string::npos) << o.out;
  EXPECT_EQ(o.err, "");
  ExpectHostUntouched();
  // What the guest left behind: only the host's own links.
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(root_ / "rw")) left.push_back(e.path().filename());
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{"abs_link", "out_link"}));
}

TEST_P(WasiTest, FilesystemWithTheComponentWalkInsteadOfOpenat2) {
  wasi::ForcePathWalkForTesting(true);
  Outcome o = Run("wasi_fs", FsConfig({"wasi_fs", "fs"}));
  wasi::ForcePathWalkForTesting(false);
  ASSERT_TRUE(o.status) << o.status.error().ToString();
  EXPECT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(o.err, "");
  ExpectHostUntouched();
}

TEST_P(WasiTest, OpenDescriptorsAreLimited) {
  WasiConfig config = FsConfig({"wasi_fs", "fdlimit"});
  config.max_open_fds = 8;
  Outcome o = Run("wasi_fs", config);
  ASSERT_TRUE(o.status) << o.status.error().ToString();
  EXPECT_EQ(o.exit_code, 0) << o.err;
}

TEST_P(WasiTest, FifosInPreopensNeverBlockTheOpen) {
  WasiConfig config = FsConfig({"wasi_fs", "fifo"});
  ASSERT_EQ(mkfifo((root_ / "rw" / "fifo").c_str(), 0600), 0);
  Outcome o = Run("wasi_fs", config);
  ASSERT_TRUE(o.status) << o.status.error().ToString();
  EXPECT_EQ(o.exit_code, 0) << o.err;
}

TEST_P(WasiTest, InterruptWakesAGuestBlockedReadingAFifo) {
  WasiConfig config = FsConfig({"wasi_fs", "fifo_block"});
  const fs::path fifo = root_ / "rw" / "fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  wasi::UniqueFd held(open(fifo.c_str(), O_RDWR | O_CLOEXEC));  // a writer that never writes
  ASSERT_TRUE(held.valid());
  const auto start = steady_clock::now();
  Outcome o = Run("wasi_fs", config, [](auto interrupt) {
    std::this_thread::sleep_for(milliseconds(200));
    interrupt();
  });
  ASSERT_FALSE(o.status);
  EXPECT_EQ(o.status.error().code, ErrorCode::kInterrupted) << o.status.error().ToString();
  EXPECT_EQ(o.out, "opened 1\n");
  EXPECT_LT(steady_clock::now() - start, milliseconds(5000));
}

TEST_P(WasiTest, ResolversAgreeOnEveryPath) {
  // Both resolvers, path by path: same result, and never outside.
  (void)FsConfig({});
  fs::create_directories(root_ / "rw" / "a" / "b");
  std::ofstream(root_ / "rw" / "a" / "f") << "f";
  fs::create_symlink("b", root_ / "rw" / "a" / "to_b");
  fs::create_symlink("../../outside", root_ / "rw" / "a" / "out");
  fs::create_symlink("loop", root_ / "rw" / "loop");
  fs::create_symlink("a/to_b/../f", root_ / "rw" / "via");
  wasi::UniqueFd dir(open((root_ / "rw").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  ASSERT_TRUE(dir.valid());
  const std::vector<std::pair<std::string, int>> cases = {
      {"a/f", 0},
      {"a//./f", 0},
      {"a/b/../f", 0},
      {"a/to_b/..", 0},
      {"via", 0},
      {"a/to_b/", 0},
      {".", 0},
      {"a/..", 0},
      {"..", EPERM},
      {"a/../..", EPERM},
      {"/etc", EPERM},
      {"a/out", EPERM},
      {"a/out/secret.txt", EPERM},
      {"abs_link/passwd", EPERM},
      {"out_link", EPERM},
      {"loop", ELOOP},
      {"a/f/", ENOTDIR},
      {"missing", ENOENT},
      {"", ENOENT},
      {"a/missing/x", ENOENT},
  };
  for (bool walk : {false, true}) {
    wasi::ForcePathWalkForTesting(walk);
    for (const auto& [path, expected] : cases) {
      int fd = wasi::OpenBeneath(dir.get(), path, O_PATH, 0);
      EXPECT_EQ(fd < 0 ? -fd : 0, expected) << path << (walk ? " (walk)" : " (openat2)");
      if (fd >= 0) close(fd);
    }
    // The last component is not followed under O_NOFOLLOW.
    int fd = wasi::OpenBeneath(dir.get(), "a/out", O_PATH | O_NOFOLLOW, 0);
    EXPECT_GE(fd, 0) << walk;
    if (fd >= 0) close(fd);
    EXPECT_EQ(wasi::OpenBeneath(dir.get(), "a/out", O_RDONLY | O_NOFOLLOW, 0), -ELOOP) << walk;
  }
  wasi::ForcePathWalkForTesting(false);
}

TEST_P(WasiTest, ConfigErrorsAreReported) {
  WasiConfig config;
  config.preopens = {{"/nonexistent/keel", "/x", true}};
  auto ctx = WasiContext::Create(config);
  ASSERT_FALSE(ctx);
  EXPECT_EQ(ctx.error().code, ErrorCode::kNotFound);

  config = {};
  config.env = {{"A=B", "c"}};
  EXPECT_EQ(WasiContext::Create(config).error().code, ErrorCode::kInvalidArgument);
  config = {};
  config.args = {std::string("a\0b", 3)};
  EXPECT_EQ(WasiContext::Create(config).error().code, ErrorCode::kInvalidArgument);
  config = {};
  config.max_open_fds = 2;
  EXPECT_EQ(WasiContext::Create(config).error().code, ErrorCode::kInvalidArgument);
  config = {};
  config.stdin_io = WasiStdio::Inherit(12345);
  EXPECT_EQ(WasiContext::Create(config).error().code, ErrorCode::kInvalidArgument);
}

TEST_P(WasiTest, WasiWithoutAWasiContextFailsTheCallNotTheHost) {
  auto module = Compile("wasi_basics");
  ASSERT_TRUE(module);
  auto instance = ctx_->Instantiate(module, linker_, std::make_unique<engine::HostState>(), ++tag_);
  ASSERT_TRUE(instance) << instance.error().ToString();
  auto result = (*instance)->Invoke("_start", {}, ++tag_);
  ASSERT_FALSE(result);
  EXPECT_EQ(result.error().code, ErrorCode::kTrap);
  EXPECT_NE(result.error().message.find("without a WASI context"), std::string::npos)
      << result.error().ToString();
}

INSTANTIATE_TEST_SUITE_P(Engines, WasiTest, ::testing::ValuesIn(engine::AvailableEngines()),
                         [](const auto& info) { return std::string(engine::ToString(info.param)); });

}  // namespace
}  // namespace keel::abi
