// The Rust WASI command (rgrep) and the byte-call guests through the built
// `keel` binary, as a user runs them: real processes, files in a preopened
// directory, stdin, exit codes.
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "testing/subprocess.h"

namespace keel {
namespace {

using ::testing::HasSubstr;
using testing::ProcessResult;
using testing::RunProcess;

std::string Guest(const std::string& name) { return std::string(KEEL_GUEST_DIR) + "/" + name + ".wasm"; }

ProcessResult Keel(std::vector<std::string> args, const std::string& input = "") {
  args.insert(args.begin(), KEEL_BIN);
  return RunProcess(args, input);
}

class RgrepTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("keel-rgrep-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir_);
    std::ofstream(dir_ / "a.txt") << "alpha\nBeta\ngamma beta\n";
    std::ofstream(dir_ / "b.txt") << "nothing here\nbeta\xff raw bytes\n";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // rgrep with the directory preopened read-only at /data.
  ProcessResult Rgrep(std::vector<std::string> args, const std::string& input = "") {
    std::vector<std::string> all = {"run", "--dir-ro", dir_.string() + "::/data", Guest("rgrep"), "--"};
    all.insert(all.end(), args.begin(), args.end());
    return Keel(all, input);
  }

  std::filesystem::path dir_;
};

TEST_F(RgrepTest, PrintsMatchingLinesOfFiles) {
  ProcessResult r = Rgrep({"-n", "beta", "/data/a.txt"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "3:gamma beta\n");
  r = Rgrep({"-i", "beta", "/data/a.txt", "/data/b.txt"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "/data/a.txt:Beta\n/data/a.txt:gamma beta\n/data/b.txt:beta\xff raw bytes\n");
  r = Rgrep({"-c", "^[a-z]+$", "/data/a.txt", "/data/b.txt"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "/data/a.txt:1\n/data/b.txt:0\n");
}

TEST_F(RgrepTest, ReadsStdin) {
  ProcessResult r = Rgrep({"o+"}, "foo\nbar\nboo\n");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "foo\nboo\n");
  r = Rgrep({"x", "-"}, "a\nb\n");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "");
}

TEST_F(RgrepTest, ErrorsExitTwoWithAMessage) {
  ProcessResult r = Rgrep({"(", "/data/a.txt"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("rgrep: invalid pattern: regex parse error"));
  r = Rgrep({"a", "/data/missing.txt"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("rgrep: /data/missing.txt: No such file or directory"));
  r = Rgrep({"a", "/etc/passwd"});  // outside the preopen
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("rgrep: /etc/passwd:"));
  EXPECT_EQ(r.out, "");
  r = Rgrep({});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("usage: rgrep"));
  r = Rgrep({"-x", "a"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("unknown option -x"));
}

TEST(GuestsCliTest, ByteCallsFromTheCommandLine) {
  ProcessResult r = Keel({"run", Guest("markdown"), "--invoke", "render", "--input", "-"}, "# Hi\n");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "<h1>Hi</h1>\n");
  r = Keel({"run", Guest("csv"), "--invoke", "columns", "--input", "-"}, "a,b\n");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, R"(["a","b"])");
  ProcessResult panic = Keel({"run", Guest("hostile_rust"), "--invoke", "panic", "--input", "-"}, "boom");
  EXPECT_EQ(panic.exit_code, 134);
  EXPECT_THAT(panic.err, HasSubstr("panic: panicked at hostile/src/lib.rs:"));
  EXPECT_THAT(panic.err, HasSubstr("deliberate panic: boom"));
}

}  // namespace
}  // namespace keel
