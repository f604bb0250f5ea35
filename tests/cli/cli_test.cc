// The `keel` command as a user meets it: a real process, real exit codes.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "testing/subprocess.h"

namespace keel {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;
using testing::ProcessResult;
using testing::RunProcess;

std::string Fixture(const std::string& name) { return std::string(KEEL_FIXTURE_DIR) + "/" + name + ".wasm"; }
std::string Guest(const std::string& name) { return std::string(KEEL_GUEST_DIR) + "/" + name + ".wasm"; }

ProcessResult Keel(std::vector<std::string> args, const std::string& input = "") {
  args.insert(args.begin(), KEEL_BIN);
  return RunProcess(args, input);
}

TEST(CliTest, InspectPrintsSignatures) {
  ProcessResult r = Keel({"inspect", Fixture("engine_host")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("host.mix: func (i64, f32, f64) -> (f64, i64)"));
  EXPECT_THAT(r.out, HasSubstr("call_add3: func (i32, i32, i32) -> (i32)"));
  EXPECT_THAT(r.out, HasSubstr("memory: memory"));
}

TEST(CliTest, InspectRejectsHostileBytes) {
  auto dir = std::filesystem::temp_directory_path() / ("keel-cli-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  std::string path = (dir / "junk.wasm").string();
  std::ofstream(path) << "\x7f" "ELF not wasm";
  ProcessResult r = Keel({"inspect", path});
  EXPECT_EQ(r.exit_code, 65);
  EXPECT_THAT(r.err, HasSubstr("not a WebAssembly module"));
  EXPECT_EQ(Keel({"inspect", (dir / "missing.wasm").string()}).exit_code, 66);
  std::filesystem::remove_all(dir);
}

TEST(CliTest, RunInvokePrintsResultsExactly) {
  ProcessResult r = Keel({"run", Fixture("engine_basic"), "--invoke", "swap", "-7",
                          "-9223372036854775808", "-0", "0.1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "0.1\n-0\n-9223372036854775808\n-7\n");
  r = Keel({"run", "--invoke", "add", Fixture("engine_basic"), "40", "2"});  // options first
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "42\n");
}

TEST(CliTest, ExitCodes) {
  EXPECT_EQ(Keel({"run"}).exit_code, 64);
  EXPECT_EQ(Keel({"run", Fixture("engine_basic"), "--invoke", "add", "1"}).exit_code, 64);
  EXPECT_EQ(Keel({"run", Fixture("engine_basic"), "--invoke", "add", "1", "x"}).exit_code, 64);
  EXPECT_EQ(Keel({"run", Fixture("engine_basic"), "--invoke", "nope"}).exit_code, 64);
  EXPECT_EQ(Keel({"run", Fixture("invalid_body"), "--invoke", "f"}).exit_code, 65);
  EXPECT_EQ(Keel({"run", Fixture("engine_host"), "--invoke", "gate", "1"}).exit_code, 65);
  EXPECT_EQ(Keel({"run", "/nonexistent.wasm", "--invoke", "f"}).exit_code, 66);
  ProcessResult trap = Keel({"run", Fixture("engine_basic"), "--invoke", "div_s", "1", "0"});
  EXPECT_EQ(trap.exit_code, 134);
  EXPECT_THAT(trap.err, HasSubstr("integer_divide_by_zero"));
  EXPECT_THAT(trap.err, HasSubstr("wasm backtrace"));
  ProcessResult slow = Keel({"run", Fixture("engine_basic"), "--invoke", "spin", "--timeout", "100ms"});
  EXPECT_EQ(slow.exit_code, 124);
  EXPECT_THAT(slow.err, HasSubstr("deadline_exceeded"));
  EXPECT_EQ(Keel({"run", Fixture("engine_basic"), "--invoke", "spin", "--timeout", "soon"}).exit_code, 64);
}

TEST(CliTest, RunRefusesAModuleWhoseStartFunctionFailsOrOverrunsTheTimeout) {
  ProcessResult trap = Keel({"run", Fixture("server_bad_start"), "--invoke", "f"});
  EXPECT_EQ(trap.exit_code, 65) << trap.err;
  EXPECT_THAT(trap.err, HasSubstr("start function"));
  EXPECT_THAT(trap.err, HasSubstr("unreachable"));
  ProcessResult endless = Keel({"run", Fixture("engine_start"), "--invoke", "f", "--timeout", "200ms"});
  EXPECT_EQ(endless.exit_code, 65) << endless.err;
  EXPECT_THAT(endless.err, HasSubstr("did not finish within 200 ms"));
}

TEST(CliTest, RunsWasiProgramsWithArgsEnvAndStdio) {
  ProcessResult r = Keel({"run", Guest("hello"), "--env", "GREETING=hi", "--", "one", "two words"},
                         "from stdin");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("argv[1]=one"));
  EXPECT_THAT(r.out, HasSubstr("argv[2]=two words"));
  EXPECT_THAT(r.out, HasSubstr("GREETING=hi"));
  EXPECT_THAT(r.out, HasSubstr("from stdin"));
}

TEST(CliTest, RunChoosesTheEngine) {
  ProcessResult bad = Keel({"run", "--engine", "v8", Guest("hello")});
  EXPECT_EQ(bad.exit_code, 64);
  EXPECT_THAT(bad.err, HasSubstr("unknown engine 'v8' (spidermonkey or wasmtime)"));
#if KEEL_WITH_WASMTIME
  const char* engines[] = {"spidermonkey", "wasmtime"};
#else
  const char* engines[] = {"spidermonkey"};
  ProcessResult missing = Keel({"run", "--engine", "wasmtime", Guest("hello")});
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_THAT(missing.err, HasSubstr("no Wasmtime engine"));
#endif
  for (const char* engine : engines) {
    ProcessResult r = Keel({"run", "--engine", engine, Guest("hello"), "--", "exit=3"}, "in");
    EXPECT_EQ(r.exit_code, 3) << engine << ": " << r.err;
    EXPECT_THAT(r.out, HasSubstr("argv[1]=exit=3")) << engine;
    ProcessResult sum = Keel({"run", "--engine", engine, "--invoke", "add", Fixture("engine_basic"), "40", "2"});
    EXPECT_EQ(sum.exit_code, 0) << engine << ": " << sum.err;
    EXPECT_EQ(sum.out, "42\n") << engine;
  }
}

TEST(CliTest, ProgramExitCodeBecomesTheProcessExitCode) {
  ProcessResult r = Keel({"run", Guest("hello"), "--", "exit=3"});
  EXPECT_EQ(r.exit_code, 3) << r.out << r.err;
}

TEST(CliTest, ByteCallFromFileOrStdin) {
  ProcessResult r = Keel({"run", Guest("sha256"), "--invoke", "hash", "--input", "-"}, "abc");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  ProcessResult bad = Keel({"run", Guest("json_transform"), "--invoke", "transform", "--input", "-"}, "{oops");
  EXPECT_EQ(bad.exit_code, 134);
  EXPECT_THAT(bad.err, HasSubstr("invalid JSON"));
}

// What `hello` printed as its argv[1..] (argv[0] is the module path).
std::vector<std::string> GuestArgs(const std::string& out) {
  std::vector<std::string> args;
  std::istringstream lines(out);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.starts_with("argv[") && !line.starts_with("argv[0]=")) {
      args.push_back(line.substr(line.find('=') + 1));
    }
  }
  return args;
}

using Words = std::vector<std::string>;

TEST(CliTest, RunHandsEveryWordAfterTheModuleToTheGuestInOrder) {
  const std::string dir = std::filesystem::temp_directory_path().string();
  const std::string hello = Guest("hello");
  struct Case {
    Words argv;
    Words guest;
  };
  const Case cases[] = {
      {{"run", "--dir", dir, hello, "--"}, {}},  // a bare trailing --
      {{"run", "--dir", dir, hello, "--", "a", "-b", "--c"}, {"a", "-b", "--c"}},
      {{"run", hello, "x", "--flag"}, {"x", "--flag"}},
      {{"run", hello, "-", "-7", "--", "--"}, {"-", "-7", "--"}},
      {{"run", hello, "", "x y", "-"}, {"", "x y", "-"}},
      {{"run", "--", hello, "--dir", "d"}, {"--dir", "d"}},  // MODULE right after --
      {{"run", hello, "a", "--dir=" + dir, "b", "--timeout", "10s", "c"}, {"a", "b", "c"}},
  };
  for (const Case& c : cases) {
    ProcessResult r = Keel(c.argv);
    EXPECT_EQ(r.exit_code, 0) << ::testing::PrintToString(c.argv) << r.err;
    EXPECT_EQ(GuestArgs(r.out), c.guest) << ::testing::PrintToString(c.argv);
  }
}

TEST(CliTest, RunTakesItsOptionsOnEitherSideOfTheModuleUntilDoubleDash) {
  // --env after the module is keel's; after -- it is the guest's.
  ProcessResult r = Keel({"run", Guest("hello"), "one", "--env", "K=after", "two", "--", "--env",
                          "K=guest"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("env K=after\n"));
  EXPECT_EQ(GuestArgs(r.out), (Words{"one", "two", "--env", "K=guest"}));
  // Values are taken verbatim, from the next word or after '='.
  r = Keel({"run", "--env=K=a=b", Guest("hello"), "--env", "L=-x"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("env K=a=b\n"));
  EXPECT_THAT(r.out, HasSubstr("env L=-x\n"));
  EXPECT_EQ(GuestArgs(r.out), Words{});
}

TEST(CliTest, RunHelpStatesTheRule) {
  for (const Words& argv :
       {Words{"run", "--help"}, Words{"run", "-h"}, Words{"run", Guest("hello"), "--help"}}) {
    ProcessResult r = Keel(argv);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_THAT(r.out, StartsWith("Usage: keel run [OPTIONS] MODULE [ARGS...]\n"));
    EXPECT_THAT(r.out, HasSubstr("keel's options may come before or after MODULE"));
    EXPECT_THAT(r.out, HasSubstr("`--` ends keel's options"));
    EXPECT_THAT(r.out, HasSubstr("--dir HOST[::GUEST]"));
    EXPECT_THAT(r.out, Not(HasSubstr("hello from keel")));
  }
  // After --, --help is the guest's.
  ProcessResult r = Keel({"run", Guest("hello"), "--", "--help"});
  EXPECT_EQ(GuestArgs(r.out), Words{"--help"});
  EXPECT_THAT(Keel({"--help"}).out, HasSubstr("run"));
  EXPECT_THAT(Keel({"--version"}).out, StartsWith("keel "));
  EXPECT_THAT(Keel({"--version"}).out, HasSubstr("(engines: spidermonkey"));
}

TEST(CliTest, RunUsageErrorsNameWhatWasWrong) {
  struct Case {
    Words argv;
    std::string message;
  };
  const Case cases[] = {
      {{"run"}, "MODULE is required"},
      {{"run", "--dir", "/tmp"}, "MODULE is required"},
      {{"run", "--"}, "MODULE is required"},
      {{"run", "--bogus", Guest("hello")}, "unknown option '--bogus' before MODULE"},
      {{"run", Guest("hello"), "--timeout"}, "--timeout needs a value DURATION"},
      {{"run", Guest("hello"), "--timeout", "soon"}, "--timeout 'soon'"},
      {{"run", "--dir"}, "--dir needs a value HOST[::GUEST]"},
  };
  for (const Case& c : cases) {
    ProcessResult r = Keel(c.argv);
    EXPECT_EQ(r.exit_code, 64) << ::testing::PrintToString(c.argv);
    EXPECT_THAT(r.err, HasSubstr(c.message)) << ::testing::PrintToString(c.argv);
    EXPECT_THAT(r.err, HasSubstr("keel run --help"));
  }
}

TEST(CliTest, InvokeTakesAnyExportNameVerbatim) {
  const std::string names = KEEL_CLI_NAMES;
  ProcessResult r = Keel({"run", "--invoke", "-x", names});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "1\n");
  r = Keel({"run", names, "--invoke", "--env"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "2\n");
  r = Keel({"run", names, "--invoke=a=b c", "--", "-4"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "-1\n");
  // The empty name is a name: looked up, not taken for "no --invoke".
  for (const Words& argv :
       {Words{"run", "--invoke", "", Guest("hello")}, Words{"run", "--invoke=", Guest("hello")}}) {
    r = Keel(argv);
    EXPECT_EQ(r.exit_code, 64);
    EXPECT_THAT(r.err, HasSubstr("no export named \"\""));
    EXPECT_THAT(r.out, Not(HasSubstr("hello from keel")));
  }
}

TEST(CliTest, PreopensAreOffUnlessAsked) {
  auto dir = std::filesystem::temp_directory_path() / ("keel-cli-dir-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  // The hostile guest tries to escape every preopen it is given.
  // Options before the program: --dir takes one value, not the program too.
  ProcessResult r = Keel({"run", "--dir", dir.string() + "::/sandbox", "--dir-ro",
                          dir.string() + "::/ro", Guest("hostile_path_escape")});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  // Nor can it leave links on the host that point out of its preopen.
  EXPECT_THAT(r.out, HasSubstr("keel_escape_rel -> ../../../../../../etc/passwd: EPERM"));
  EXPECT_THAT(r.out, HasSubstr("keel_escape_abs -> /etc/passwd: EPERM"));
  EXPECT_TRUE(std::filesystem::is_empty(dir)) << r.out;
  std::filesystem::remove_all(dir);
}

TEST(CliTest, InspectPrintsEveryNameUnambiguously) {
  ProcessResult r = Keel({"inspect", Fixture("names_exact")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // Plain names as they are; the others as WebAssembly string literals,
  // the form `keel run --invoke` reads back.
  EXPECT_THAT(r.out, HasSubstr("\n  a: func () -> (i32)\n"));
  EXPECT_THAT(r.out, HasSubstr("\n  \"\": func () -> (i32)\n"));
  EXPECT_THAT(r.out, HasSubstr("\n  \"a\\00b\": func () -> (i32)\n"));
  EXPECT_THAT(r.out, HasSubstr("\n  \"\\00\": func () -> (i32)\n"));
  EXPECT_THAT(r.out, HasSubstr("\n  \"caf\\u{e9}\": func () -> (i32)\n"));
  EXPECT_THAT(r.out, HasSubstr("\n  \"mem\\00ory\": memory 1.. pages\n"));
  EXPECT_THAT(r.out, HasSubstr("\n  \"\".\"\": func () -> (i32)\n"));
  EXPECT_THAT(r.out, HasSubstr("\n  \"env\\00x\".\"f\\00g\": func () -> (i32)\n"));
  EXPECT_THAT(r.out, HasSubstr("\n  env.f: func () -> (i32)\n"));
  EXPECT_EQ(r.out.find('\0'), std::string::npos);
  EXPECT_EQ(r.out.find("keel:"), std::string::npos);  // keel's own renamings never show

  // Whatever inspect prints, --invoke takes back.
  const std::string names = KEEL_CLI_NAMES;
  ProcessResult nul = Keel({"run", names, "--invoke", "\"a\\00b\""});
  EXPECT_EQ(nul.exit_code, 0) << nul.err;
  EXPECT_EQ(nul.out, "4\n");
  ProcessResult bad = Keel({"run", names, "--invoke", "\"unterminated"});
  EXPECT_EQ(bad.exit_code, 64);
  EXPECT_THAT(bad.err, HasSubstr("not a well-formed string literal"));

  ProcessResult types = Keel({"inspect", Fixture("types_v128")});
  ASSERT_EQ(types.exit_code, 0) << types.err;
  EXPECT_THAT(types.out, HasSubstr("simd: func (v128) -> (funcref)"));
  EXPECT_THAT(types.out, HasSubstr("ext: func (externref, i32) -> (externref)"));
}

TEST(CliTest, RunInvokeKeepsNanSignsAndPayloads) {
  struct Case {
    const char* func;
    const char* arg;
    const char* out;
  };
  const std::vector<Case> cases = {
      {"id_f32", "-nan(0x3fffff)", "-nan:0x7fffff\n"},
      {"id_f64", "-nan(0x7ffffffffffff)", "-nan:0xfffffffffffff\n"},
      {"id_f32", "nan:0x1", "nan:0x1\n"},  // signaling
      {"id_f64", "-nan", "-nan\n"},
      {"id_f32", "-0", "-0\n"},
  };
  for (const Case& c : cases) {
    ProcessResult r = Keel({"run", Fixture("engine_basic"), "--invoke", c.func, "--", c.arg});
    ASSERT_EQ(r.exit_code, 0) << c.arg << ": " << r.err;
    EXPECT_EQ(r.out, c.out) << c.arg;
  }
}

}  // namespace
}  // namespace keel
