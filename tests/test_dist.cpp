// The multi-GPU layer's host side, no GPU needed: the NCCL id's text form, the rank environment,
// the launcher (real child processes: a tiny shell command per rank), the rendezvous of several
// hosts (file and TCP on loopback), and the split of validation windows over ranks.
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/check.h"
#include "common/clock.h"
#include "common/io.h"
#include "dist/comm.h"
#include "dist/launch.h"
#include "dist/rank.h"
#include "eval/evaluate.h"
#include "tests/tmp_dir.h"

using namespace pg;

namespace {

ncclUniqueId random_id(std::mt19937_64& rng) {
    ncclUniqueId id;
    for (char& c : id.internal) c = char(rng() & 0xFF);
    return id;
}

bool same(const ncclUniqueId& a, const ncclUniqueId& b) { return std::memcmp(a.internal, b.internal, sizeof a.internal) == 0; }

// The launcher's message when `plan` fails, or "" when every rank exited 0.
std::string launch_error(const LaunchPlan& plan) {
    try {
        run_ranks(plan);
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

LaunchPlan shell_plan(const std::string& script, int first_rank, int local_ranks, int world) {
    LaunchPlan p;
    p.exe = "/bin/sh";
    p.argv = {"sh", "-c", script};
    p.first_rank = first_rank;
    p.local_ranks = local_ranks;
    p.world = world;
    return p;
}

// Rank variables set for one test, removed after it.
struct RankEnv {
    RankEnv(const std::string& rank, const std::string& world, const std::string& local, const std::string& id) {
        setenv(kEnvRank, rank.c_str(), 1);
        setenv(kEnvWorld, world.c_str(), 1);
        setenv(kEnvLocalRank, local.c_str(), 1);
        setenv(kEnvNcclId, id.c_str(), 1);
    }
    ~RankEnv() {
        for (const char* v : {kEnvRank, kEnvWorld, kEnvLocalRank, kEnvNcclId}) unsetenv(v);
    }
};

}  // namespace

TEST_CASE("dist: NCCL id survives its hex form; malformed text is rejected naming its source") {
    const uint64_t seed = fresh_seed();
    INFO("seed = " << seed);
    std::mt19937_64 rng(seed);
    for (int i = 0; i < 20; ++i) {
        const ncclUniqueId id = random_id(rng);
        const std::string hex = id_to_hex(id);
        CHECK(hex.size() == 256);
        CHECK(hex.find_first_not_of("0123456789abcdef") == std::string::npos);
        CHECK(same(id_from_hex(hex, "test"), id));
        std::string upper = hex;
        for (char& c : upper) c = char(std::toupper(c));
        CHECK(same(id_from_hex(upper, "test"), id));
    }
    const std::string hex = id_to_hex(random_id(rng));
    CHECK_THROWS_WITH_AS(id_from_hex(hex.substr(1), "PGOLF_NCCL_ID"), doctest::Contains("PGOLF_NCCL_ID: an NCCL id is 256 hex digits"), Error);
    std::string bad = hex;
    bad[77] = 'g';
    CHECK_THROWS_WITH_AS(id_from_hex(bad, "f.txt"), doctest::Contains("f.txt: not a hex digit at position 77"), Error);
}

TEST_CASE("dist: a launched rank reads its place from the environment") {
    std::mt19937_64 rng(fresh_seed());
    const ncclUniqueId id = random_id(rng);
    RankInfo me;
    CHECK_FALSE(rank_from_env(me));
    {
        RankEnv env("5", "8", "1", id_to_hex(id));
        REQUIRE(rank_from_env(me));
        CHECK(me.rank == 5);
        CHECK(me.world == 8);
        CHECK(me.local_rank == 1);
        CHECK_FALSE(me.leader());
        CHECK(same(me.id, id));
        // launch_ranks in a launched rank: no second launch, the rank goes on.
        RankInfo again;
        char arg0[] = "pgolf";
        char* argv[] = {arg0, nullptr};
        CHECK_FALSE(launch_ranks(1, argv, 4, DistOptions{}, again));
        CHECK(again.rank == 5);
    }
    {
        RankEnv env("8", "8", "0", id_to_hex(id));
        CHECK_THROWS_WITH_AS(rank_from_env(me), doctest::Contains("PGOLF_RANK='8': expected an integer in [0, 7]"), Error);
    }
    {
        RankEnv env("1", "2", "x", id_to_hex(id));
        CHECK_THROWS_WITH_AS(rank_from_env(me), doctest::Contains("PGOLF_LOCAL_RANK='x'"), Error);
    }
    {
        RankEnv env("1", "2", "1", "abc");
        CHECK_THROWS_WITH_AS(rank_from_env(me), doctest::Contains("PGOLF_NCCL_ID: an NCCL id is 256 hex digits"), Error);
    }
}

TEST_CASE("dist: launch options are checked before anything starts") {
    char arg0[] = "pgolf";
    char* argv[] = {arg0, nullptr};
    RankInfo me;
    DistOptions o;
    o.nodes = 0;
    CHECK_THROWS_WITH_AS(launch_ranks(1, argv, 1, o, me), doctest::Contains("--nodes must be >= 1"), Error);
    o.nodes = 2;
    o.node_rank = 2;
    CHECK_THROWS_WITH_AS(launch_ranks(1, argv, 1, o, me), doctest::Contains("--node-rank 2: must be in [0, 2)"), Error);
    o.node_rank = 1;
    CHECK_THROWS_WITH_AS(launch_ranks(1, argv, 1, o, me), doctest::Contains("--nodes 2 needs --rendezvous"), Error);
    CHECK_THROWS_WITH_AS(launch_ranks(1, argv, 1000, DistOptions{}, me), doctest::Contains("--gpus 1000: only"), Error);
    CHECK_THROWS_WITH_AS(fetch_id("nfs:/x", 1), doctest::Contains("expected file:PATH or tcp:HOST:PORT"), Error);
    CHECK_THROWS_WITH_AS(fetch_id("tcp:host:99999", 1), doctest::Contains("expected file:PATH or tcp:HOST:PORT"), Error);
    CHECK_THROWS_WITH_AS(fetch_id("tcp:host", 1), doctest::Contains("expected file:PATH or tcp:HOST:PORT"), Error);
}

TEST_CASE("dist: the launcher starts every rank with its rank, world, device and id") {
    TmpDir dir;
    std::mt19937_64 rng(fresh_seed());
    // Node 1 of 2, four GPUs a node: global ranks 4..7.
    LaunchPlan p = shell_plan("printf '%s %s %s %s %s' \"$PGOLF_RANK\" \"$PGOLF_WORLD\" \"$PGOLF_LOCAL_RANK\" "
                              "\"$PGOLF_NCCL_ID\" \"$NCCL_NVLS_ENABLE\" > " +
                                  dir.path + "/rank$PGOLF_RANK",
                              4, 4, 8);
    p.id = random_id(rng);
    setenv("NCCL_NVLS_ENABLE", "1", 1);  // the launcher overrides it whatever the user set
    CHECK(launch_error(p) == "");
    unsetenv("NCCL_NVLS_ENABLE");
    for (int r = 4; r < 8; ++r) {
        CAPTURE(r);
        REQUIRE(file_exists(dir / ("rank" + std::to_string(r))));
        CHECK(read_text(dir / ("rank" + std::to_string(r))) ==
              format("%d 8 %d %s 0", r, r - 4, id_to_hex(p.id).c_str()));
    }
}

TEST_CASE("dist: a rank that fails brings the launcher down with one line naming it, without waiting") {
    // The other ranks would run 30 s; the launcher must stop them at once.
    struct Case {
        std::string script, message;
    };
    const Case cases[] = {
        {"if [ \"$PGOLF_RANK\" = 6 ]; then sleep 0.2; exit 3; fi; exec sleep 30", "rank 6 exited with status 3; stopped the other ranks"},
        {"if [ \"$PGOLF_RANK\" = 5 ]; then kill -9 $$; fi; exec sleep 30", "rank 5 was killed by signal 9"},
    };
    for (const Case& c : cases) {
        CAPTURE(c.script);
        const auto t0 = std::chrono::steady_clock::now();
        const std::string err = launch_error(shell_plan(c.script, 4, 4, 8));
        CAPTURE(err);
        CHECK(err.find(c.message) != std::string::npos);
        CHECK(err.find('\n') == std::string::npos);
        CHECK(seconds_since(t0) < 5);
    }
    LaunchPlan missing = shell_plan("", 0, 2, 2);
    missing.exe = "/nonexistent/pgolf";
    const std::string err = launch_error(missing);
    CAPTURE(err);
    CHECK(err.find("rank 0 exited with status 127") != std::string::npos);
}

TEST_CASE("dist: node 0 hands the NCCL id to the other nodes through a file or over TCP") {
    TmpDir dir;
    std::mt19937_64 rng(fresh_seed());
    const ncclUniqueId id = random_id(rng);

    const std::string file = "file:" + (dir / "nccl_id");
    std::thread late([&] {  // the readers start first and wait for the file
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        publish_id(file, id, 1, 10);
    });
    CHECK(same(fetch_id(file, 10), id));
    late.join();

    // A free loopback port: bound once by the kernel's choice, then released for the server.
    const int probe = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    REQUIRE(bind(probe, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(getsockname(probe, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
    close(probe);
    const std::string tcp = "tcp:127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
    std::string server_error;
    std::thread server([&] {
        try {
            publish_id(tcp, id, 2, 10);
        } catch (const Error& e) {
            server_error = e.what();
        }
    });
    ncclUniqueId got[2];
    std::thread other([&] { got[1] = fetch_id(tcp, 10); });
    got[0] = fetch_id(tcp, 10);
    other.join();
    server.join();
    CHECK(server_error == "");
    CHECK(same(got[0], id));
    CHECK(same(got[1], id));

    const auto t0 = std::chrono::steady_clock::now();
    CHECK_THROWS_WITH_AS(fetch_id("file:" + (dir / "never"), 0.3), doctest::Contains("no NCCL id from node 0 within"), Error);
    CHECK(seconds_since(t0) < 3);
}
