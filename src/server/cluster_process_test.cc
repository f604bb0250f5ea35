// Three `keel serve` processes on one PostgreSQL (KEEL_TEST_PG_URL, e.g.
// from scripts/pg-test-server; skipped without it), each test in a schema
// of its own: modules uploaded, replaced and deleted through one node reach
// the others; calls work through every node; jobs submitted while a node is
// killed -9 all succeed, once each; /v1/nodes follows nodes dying and
// coming back under their name; an abort sent to one node reaches the node
// running the job.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include <boost/json.hpp>
#include <gtest/gtest.h>
#include <libpq-fe.h>

#include "base/test_engine.h"
#include "server/test_util.h"
#include "testing/pg_command.h"
#include "testing/subprocess.h"

namespace keel::server {
namespace {

using namespace std::chrono_literals;
namespace json = boost::json;
namespace http = boost::beast::http;
using testing::Client;
using testing::Eventually;
using testing::Guest;
using testing::ReadBytes;
using testing::Reply;
using testing::TempDir;

// Generous: "within 1 s" is what keel aims at; the bound only keeps a
// broken build from hanging the test.
constexpr auto kPropagation = 10s;

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string S(const json::value& v) { return std::string(v.as_string()); }

using keel::testing::PgCommand;

// One node: a `keel serve` child on a free port.
class Node {
 public:
  Node(const std::string& dir, const std::string& name, const std::string& store) {
    static int runs = 0;
    log_ = dir + "/" + name + "." + std::to_string(++runs) + ".log";
    pid_ = keel::testing::SpawnProcess(
        {KEEL_BIN, "serve", "--listen", "127.0.0.1:0", "--data", dir + "/" + name, "--store", store,
         "--node-name", name, "--lease", "2s", "--commit-lanes", "2", "--modules", KEEL_GUEST_DIR,
         "--workers", "2", "--engine", std::string(ToString(TestEngine()))},
        log_);
    std::smatch m;
    std::regex re("listening on http://127\\.0\\.0\\.1:(\\d+)");
    Eventually([&] {
      std::string log = Slurp(log_);
      if (!std::regex_search(log, m, re)) return false;
      port_ = static_cast<uint16_t>(std::stoi(m[1]));
      return true;
    }, 60s);
  }
  ~Node() { Kill(); }

  void Kill() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    keel::testing::WaitProcess(pid_);
    pid_ = -1;
  }
  int Terminate() {
    kill(pid_, SIGTERM);
    int code = keel::testing::WaitProcess(pid_);
    pid_ = -1;
    return code;
  }
  void Signal(int sig) { kill(pid_, sig); }
  uint16_t port() const { return port_; }
  std::string log() const { return Slurp(log_); }

 private:
  std::string log_;
  int pid_ = -1;
  uint16_t port_ = 0;
};

class ClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* url = std::getenv("KEEL_TEST_PG_URL");
    if (url == nullptr || url[0] == '\0') {
      GTEST_SKIP() << "KEEL_TEST_PG_URL is not set (start a server with scripts/pg-test-server)";
    }
    static int counter = 0;
    pg_url_ = url;
    schema_ = "keel_cluster_" + std::to_string(getpid()) + "_" + std::to_string(++counter);
    ASSERT_NO_FATAL_FAILURE(PgCommand(pg_url_, "CREATE SCHEMA " + schema_));
    store_ = pg_url_ + (pg_url_.find('?') == std::string::npos ? "?" : "&") +
             "options=-csearch_path%3D" + schema_;
    for (int i = 0; i < 3; ++i) Restart(i);
    for (auto& node : nodes_) ASSERT_NE(node->port(), 0) << node->log();
  }

  void TearDown() override {
    nodes_.clear();
    if (!schema_.empty()) PgCommand(pg_url_, "DROP SCHEMA " + schema_ + " CASCADE");
  }

  static std::string Name(int i) { return "node" + std::to_string(i); }
  void Restart(int i) {
    if (nodes_.size() <= static_cast<size_t>(i)) nodes_.resize(i + 1);
    nodes_[i].reset();
    nodes_[i] = std::make_unique<Node>(dir_.path(), Name(i), store_);
  }
  uint16_t Port(int i) const { return nodes_[i]->port(); }

  // name -> the node's entry in GET /v1/nodes of node `via`.
  std::map<std::string, json::object> Nodes(int via) {
    Reply r = Client(Port(via)).Get("/v1/nodes");
    std::map<std::string, json::object> out;
    if (r.status != 200) return out;
    json::value doc = r.json();
    for (const json::value& node : doc.at("nodes").as_array()) {
      out[S(node.at("name"))] = node.as_object();
    }
    return out;
  }

  // Status of calling `module`.`export` with `body` on node `i`.
  Reply Call(int i, const std::string& module, const std::string& fn, const std::string& body) {
    return Client(Port(i)).PostBytes("/v1/modules/" + module + "/call/" + fn, body);
  }

  TempDir dir_;
  std::string pg_url_;
  std::string schema_;
  std::string store_;
  std::vector<std::unique_ptr<Node>> nodes_;
};

TEST_F(ClusterTest, UploadReplaceAndDeleteReachEveryNode) {
  const std::string sha = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
  Reply put = Client(Port(0)).Put("/v1/modules/shared", ReadBytes(Guest("sha256")));
  ASSERT_EQ(put.status, 201) << put.body;
  const json::value version = put.json().at("version");
  const auto uploaded = std::chrono::steady_clock::now();
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(Eventually([&] { return Call(i, "shared", "hash", "abc").body == sha; }, kPropagation))
        << Name(i) << "\n" << nodes_[i]->log();
    // For the reader: how long the upload took to reach each node.
    std::printf("upload callable on %s after %lld ms\n", Name(i).c_str(),
                static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                           std::chrono::steady_clock::now() - uploaded)
                                           .count()));
    // Every node has the upload's version.
    EXPECT_EQ(Client(Port(i)).Get("/v1/modules/shared").json().at("version"), version);
  }
  // Replaced through another node: every node calls the new bytes.
  ASSERT_EQ(Client(Port(1)).Put("/v1/modules/shared", ReadBytes(Guest("hostile_loop"))).status, 200);
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(Eventually([&] {
      return Client(Port(i)).Get("/v1/modules/shared").body.find("\"busy_ms\"") != std::string::npos;
    }, kPropagation))
        << Name(i);
    EXPECT_EQ(Client(Port(i)).PostJson("/v1/modules/shared/call/busy_ms", R"({"args":[1]})").body,
              "{\"results\":[1]}\n");
  }
  // Deleted through a third: gone everywhere.
  ASSERT_EQ(Client(Port(2)).Send(http::verb::delete_, "/v1/modules/shared").status, 200);
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(Eventually([&] { return Client(Port(i)).Get("/v1/modules/shared").status == 404; },
                           kPropagation))
        << Name(i);
  }
  // A node started afterwards knows the names as they are now.
  ASSERT_EQ(Client(Port(0)).Put("/v1/modules/later", ReadBytes(Guest("sha256"))).status, 201);
  Restart(1);
  // Known at start, compiled at the first use: listed without exports
  // until then.
  // "compiled" of `name` in node 1's list; null when not listed.
  auto compiled = [&](std::string_view name) -> json::value {
    json::value list = Client(Port(1)).Get("/v1/modules").json();
    for (const json::value& m : list.at("modules").as_array()) {
      if (m.at("name").as_string() == name) return m.at("compiled");
    }
    return nullptr;
  };
  EXPECT_EQ(compiled("later"), false);
  EXPECT_EQ(Call(1, "later", "hash", "abc").body, sha) << nodes_[1]->log();
  EXPECT_EQ(compiled("later"), true);
  EXPECT_EQ(Client(Port(1)).Get("/v1/modules/later").json().at("compiled"), true);
  EXPECT_EQ(Client(Port(1)).Get("/v1/modules/shared").status, 404);
  // A name never used on a node is deleted through it all the same.
  Reply unused = Client(Port(0)).Put("/v1/modules/unused", ReadBytes(Guest("sha256")));
  ASSERT_EQ(unused.status, 201);
  ASSERT_TRUE(Eventually([&] { return compiled("unused") == false; }, kPropagation));
  Reply deleted = Client(Port(1)).Send(http::verb::delete_, "/v1/modules/unused");
  EXPECT_EQ(deleted.status, 200) << deleted.body;
  EXPECT_EQ(deleted.json().at("digest"), unused.json().at("digest"));
  EXPECT_TRUE(Eventually([&] { return Client(Port(0)).Get("/v1/modules/unused").status == 404; },
                         kPropagation));
}

TEST_F(ClusterTest, NodesListShowsDeathAndReturnUnderTheSameName) {
  std::map<std::string, json::object> nodes;
  ASSERT_TRUE(Eventually([&] {
    nodes = Nodes(0);
    return nodes.size() == 3 && std::all_of(nodes.begin(), nodes.end(),
                                            [](auto& n) { return n.second.at("alive") == true; });
  }, kPropagation));
  EXPECT_EQ(nodes.at("node1").at("workers"), 2);
  EXPECT_EQ(nodes.at("node0").at("self"), true);
  EXPECT_EQ(nodes.at("node1").at("self"), false);
  std::string started = S(nodes.at("node2").at("started_at"));
  // The status page and the metrics name the node.
  EXPECT_EQ(Client(Port(1)).Get("/v1/status").json().at("node"), "node1");
  EXPECT_NE(Client(Port(1)).Get("/metrics").body.find("keel_node_info{node=\"node1\"} 1"), std::string::npos);

  nodes_[2]->Kill();
  EXPECT_TRUE(Eventually([&] { return Nodes(0).at("node2").at("alive") == false; }, kPropagation));
  EXPECT_EQ(Nodes(1).at("node0").at("alive"), true);
  // A clean stop shows at once.
  EXPECT_EQ(nodes_[1]->Terminate(), 0);
  nodes = Nodes(0);
  EXPECT_EQ(nodes.at("node1").at("alive"), false);
  EXPECT_EQ(nodes.at("node1").at("stopped"), true);

  Restart(2);
  ASSERT_TRUE(Eventually([&] { return Nodes(0).at("node2").at("alive") == true; }, kPropagation));
  nodes = Nodes(2);
  EXPECT_EQ(nodes.size(), 3u);
  EXPECT_NE(S(nodes.at("node2").at("started_at")), started);
}

// Makes node 2 run a job that spins until its 1 s deadline (nodes 0 and 1
// are stopped meanwhile, so that node 2 claims it), then kills node 2 -9.
// Returns the job's id.
std::string KillNode2WhileItRunsAJob(std::vector<std::unique_ptr<Node>>& nodes) {
  nodes[0]->Signal(SIGSTOP);
  nodes[1]->Signal(SIGSTOP);
  Client c(nodes[2]->port());
  Reply r = c.PostJson("/v1/jobs", R"({"module": "loop", "export": "spin_bytes", "timeout_ms": 1000, )"
                                   R"("max_attempts": 2, "retry_backoff_ms": 0})");
  EXPECT_EQ(r.status, 202) << r.body;
  std::string id = r.status == 202 ? S(r.json().at("id")) : "";
  // A generous bound: a claim that nodes 0 or 1 sent just before they
  // stopped can take the job first, and it comes back to node 2 only when
  // that claim's lease (2 s) expires.
  json::value job;
  EXPECT_TRUE(Eventually([&] {
    job = c.Get("/v1/jobs/" + id).json();
    return job.at("state") == "running" && job.as_object().contains("started_at");
  }, 30s)) << job;
  nodes[2]->Kill();
  nodes[0]->Signal(SIGCONT);
  nodes[1]->Signal(SIGCONT);
  return id;
}

// 300 jobs under idempotency keys, submitted round-robin; node 2 is killed
// -9 half-way, while it runs a job. Submits it did not answer go to another
// node under the same key. Every job succeeds, exactly one job exists per
// key, and the job node 2 was running is run again by another node once its
// lease expires.
TEST_F(ClusterTest, JobsSurviveANodeKilledMidway) {
  ASSERT_EQ(Client(Port(0)).Put("/v1/modules/hasher", ReadBytes(Guest("sha256"))).status, 201);
  ASSERT_EQ(Client(Port(0)).Put("/v1/modules/loop", ReadBytes(Guest("hostile_loop"))).status, 201);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(Eventually([&] { return Client(Port(i)).Get("/v1/modules/hasher").status == 200 &&
                                        Client(Port(i)).Get("/v1/modules/loop").status == 200; },
                           kPropagation));
  }
  std::string spinner;
  constexpr int kJobs = 300;
  auto body = [](int k) {
    return R"({"module": "hasher", "export": "hash", "input_base64": "YWJj", "max_attempts": 5, )"
           R"("idempotency_key": "key-)" + std::to_string(k) + "\"}";
  };
  std::vector<std::string> ids(kJobs);
  std::set<int> alive = {0, 1, 2};
  for (int k = 0; k < kJobs; ++k) {
    if (k == kJobs / 2) {
      spinner = KillNode2WhileItRunsAJob(nodes_);
      alive.erase(2);
    }
    int via = k % 3;
    Reply r = Client(Port(via)).PostJson("/v1/jobs", body(k));
    if (r.status == 0) {  // that node is gone: the same key through another
      ASSERT_FALSE(alive.contains(via));
      r = Client(Port(0)).PostJson("/v1/jobs", body(k));
    }
    ASSERT_TRUE(r.status == 202 || r.status == 200) << r.status << " " << r.body;
    ids[k] = S(r.json().at("id"));
  }
  std::set<std::string> pending(ids.begin(), ids.end());
  ASSERT_EQ(pending.size(), static_cast<size_t>(kJobs));
  // Node 2's leases expire (2 s) and the others take its jobs.
  bool done = Eventually([&] {
    Client c(Port(pending.size() % 2));
    for (auto it = pending.begin(); it != pending.end();) {
      Reply r = c.Get("/v1/jobs/" + *it);
      if (r.status == 200 && r.json().at("state") == "succeeded") {
        it = pending.erase(it);
      } else {
        EXPECT_TRUE(r.status == 200 && (r.json().at("state") == "queued" || r.json().at("state") == "running"))
            << r.body;
        ++it;
      }
    }
    return pending.empty();
  }, 120s);
  EXPECT_TRUE(done) << pending.size() << " jobs unfinished";
  // Idempotency held: every key names its one job, on every node left.
  for (int k = 0; k < kJobs; ++k) {
    Reply r = Client(Port(k % 2)).PostJson("/v1/jobs", body(k));
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(S(r.json().at("id")), ids[k]);
  }
  // Node 2's lease on the spinning job expired; another node ran its second
  // and last attempt, which hit its deadline too.
  json::value job;
  EXPECT_TRUE(Eventually([&] {
    job = Client(Port(0)).Get("/v1/jobs/" + spinner).json();
    return job.at("state") == "dead" || job.at("state") == "timed_out";
  }, 60s)) << job;
  EXPECT_EQ(job.at("attempts"), 2);
  EXPECT_NE(job.at("runner"), "node2");
  Reply list = Client(Port(0)).Get("/v1/jobs?limit=1000");
  ASSERT_EQ(list.status, 200);
  EXPECT_EQ(list.json().at("jobs").as_array().size(), static_cast<size_t>(kJobs + 1));
  EXPECT_TRUE(Eventually([&] { return Nodes(0).at("node2").at("alive") == false; }, kPropagation));
}

// An abort sent to any node reaches the node running the job.
TEST_F(ClusterTest, AbortThroughAnotherNodeReachesTheOwner) {
  ASSERT_EQ(Client(Port(0)).Put("/v1/modules/loop", ReadBytes(Guest("hostile_loop"))).status, 201);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(Eventually([&] { return Client(Port(i)).Get("/v1/modules/loop").status == 200; },
                           kPropagation));
  }
  Reply r = Client(Port(0)).PostJson(
      "/v1/jobs", R"({"module": "loop", "export": "spin_bytes", "timeout_ms": 600000, "max_attempts": 1})");
  ASSERT_EQ(r.status, 202) << r.body;
  std::string id = S(r.json().at("id"));
  std::string runner;
  ASSERT_TRUE(Eventually([&] {
    json::value job = Client(Port(0)).Get("/v1/jobs/" + id).json();
    if (job.at("state") != "running" || !job.as_object().contains("started_at")) return false;
    runner = S(job.at("runner"));
    return true;
  }, kPropagation));
  int other = runner == "node0" ? 1 : 0;
  r = Client(Port(other)).Send(http::verb::delete_, "/v1/jobs/" + id + "?abort=true");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_TRUE(Eventually([&] { return Client(Port(other)).Get("/v1/jobs/" + id).json().at("state") == "cancelled"; },
                         kPropagation))
      << Client(Port(other)).Get("/v1/jobs/" + id).body;
}

}  // namespace
}  // namespace keel::server
