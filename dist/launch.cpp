#include "dist/launch.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <thread>

#include "common/clock.h"
#include "common/io.h"
#include "dist/comm.h"

extern char** environ;

namespace pg {

std::vector<Field> fields(DistOptions& d) {
    return {
        {"nodes", &d.nodes, "hosts in the run (each runs --gpus ranks)"},
        {"node-rank", &d.node_rank, "this host's index, 0 .. nodes - 1"},
        {"rendezvous", &d.rendezvous, "how node 0 hands out the NCCL id: file:PATH or tcp:HOST:PORT"},
        {"nccl-timeout", &d.nccl_timeout_s, "seconds without progress after which a rank gives up on its peers"},
    };
}

namespace {

int env_int(const char* name, int lo, int hi) {
    const char* s = std::getenv(name);
    if (!s) fail("%s is not set (the launcher sets it with %s)", name, kEnvRank);
    char* end = nullptr;
    errno = 0;
    const long v = std::strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) fail("%s='%s': expected an integer in [%d, %d]", name, s, lo, hi);
    return int(v);
}

std::string describe_status(int status) {
    if (WIFEXITED(status)) return format("exited with status %d", WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return format("was killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    return format("ended with wait status %d", status);
}

// A rendezvous string: file:PATH or tcp:HOST:PORT.
struct Rendezvous {
    bool tcp = false;
    std::string path, host;
    int port = 0;
};

Rendezvous parse_rendezvous(const std::string& s) {
    Rendezvous r;
    if (s.rfind("file:", 0) == 0 && s.size() > 5) {
        r.path = s.substr(5);
        return r;
    }
    const size_t colon = s.rfind(':');
    if (s.rfind("tcp:", 0) == 0 && colon > 4) {
        r.tcp = true;
        r.host = s.substr(4, colon - 4);
        char* end = nullptr;
        const long port = std::strtol(s.c_str() + colon + 1, &end, 10);
        if (*end == '\0' && end != s.c_str() + colon + 1 && port >= 1 && port <= 65535) {
            r.port = int(port);
            return r;
        }
    }
    fail("--rendezvous '%s': expected file:PATH or tcp:HOST:PORT", s.c_str());
}

void send_all(int fd, const std::string& s) {
    for (size_t sent = 0; sent < s.size();) {
        const ssize_t n = send(fd, s.data() + sent, s.size() - sent, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;  // that reader went away; it will time out and say so
        sent += size_t(n);
    }
}

void serve_tcp(const Rendezvous& r, const std::string& line, int readers, double timeout_s) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) fail("tcp rendezvous: socket: %s", std::strerror(errno));
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    addr.sin_port = htons(uint16_t(r.port));
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || listen(fd, readers) != 0) {
        const int e = errno;
        close(fd);
        fail("tcp rendezvous: cannot listen on port %d: %s", r.port, std::strerror(e));
    }
    const auto t0 = std::chrono::steady_clock::now();
    int served = 0;
    while (served < readers) {
        const double left = timeout_s - seconds_since(t0);
        pollfd p{fd, POLLIN, 0};
        const int ready = left > 0 ? poll(&p, 1, int(left * 1000) + 1) : 0;
        if (ready < 0 && errno == EINTR) continue;
        if (ready <= 0) {
            close(fd);
            fail("tcp rendezvous on port %d: %d of %d nodes fetched the NCCL id within %.0f s", r.port, served, readers,
                 timeout_s);
        }
        const int c = accept(fd, nullptr, nullptr);
        if (c < 0) continue;
        send_all(c, line);
        close(c);
        ++served;
    }
    close(fd);
}

// One attempt: the id line from node 0, or "" when it is not (yet) listening.
std::string try_fetch_tcp(const Rendezvous& r) {
    addrinfo hints{}, *res = nullptr;
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(r.host.c_str(), std::to_string(r.port).c_str(), &hints, &res) != 0 || !res) return "";
    const int fd = socket(res->ai_family, res->ai_socktype, res->ai_protocol);
    std::string got;
    if (fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) == 0) {
        timeval tv{5, 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        char buf[512];
        for (;;) {
            const ssize_t n = recv(fd, buf, sizeof buf, 0);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            got.append(buf, size_t(n));
        }
    }
    if (fd >= 0) close(fd);
    freeaddrinfo(res);
    return got;
}

// argv of this process, as the kernel holds it: NUL-terminated strings.
std::vector<std::string> own_command_line() {
    std::ifstream f("/proc/self/cmdline", std::ios::binary);
    const std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (all.empty()) fail("/proc/self/cmdline: cannot read this process's command line to start the ranks");
    std::vector<std::string> args;
    for (size_t at = 0; at < all.size();) {
        const size_t end = all.find('\0', at);
        args.push_back(all.substr(at, end - at));
        if (end == std::string::npos) break;
        at = end + 1;
    }
    return args;
}

std::string trim(std::string s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
    return s;
}

}  // namespace

bool rank_from_env(RankInfo& me) {
    if (!std::getenv(kEnvRank)) return false;
    me.world = env_int(kEnvWorld, 1, 1 << 20);
    me.rank = env_int(kEnvRank, 0, me.world - 1);
    me.local_rank = env_int(kEnvLocalRank, 0, me.rank);
    const char* id = std::getenv(kEnvNcclId);
    if (!id) fail("%s is not set (the launcher sets it with %s)", kEnvNcclId, kEnvRank);
    me.id = id_from_hex(id, kEnvNcclId);
    return true;
}

void publish_id(const std::string& rendezvous, const ncclUniqueId& id, int readers, double timeout_s) {
    const Rendezvous r = parse_rendezvous(rendezvous);
    const std::string line = id_to_hex(id) + "\n";
    if (r.tcp)
        serve_tcp(r, line, readers, timeout_s);
    else
        write_file_atomic(r.path, line);
}

ncclUniqueId fetch_id(const std::string& rendezvous, double timeout_s) {
    const Rendezvous r = parse_rendezvous(rendezvous);
    const auto t0 = std::chrono::steady_clock::now();
    for (;;) {
        std::string got;
        if (r.tcp)
            got = try_fetch_tcp(r);
        else if (file_exists(r.path))
            got = read_text(r.path);
        got = trim(got);
        if (!got.empty()) return id_from_hex(got, rendezvous);
        if (seconds_since(t0) > timeout_s)
            fail("--rendezvous %s: no NCCL id from node 0 within %.0f s (is node 0 running with the same --rendezvous?)",
                 rendezvous.c_str(), timeout_s);
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
}

void run_ranks(const LaunchPlan& plan) {
    PG_CHECK(plan.local_ranks >= 1 && plan.first_rank >= 0 && plan.first_rank + plan.local_ranks <= plan.world);
    // Everything a child needs is built before fork: between fork and exec only async-signal-safe
    // calls are allowed (this process may have threads, NCCL's bootstrap root among them).
    std::vector<char*> args;
    for (const std::string& a : plan.argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    const std::string id_hex = id_to_hex(plan.id);
    std::vector<std::string> base;
    for (char** e = environ; *e; ++e) {
        const std::string kv = *e;
        const std::string key = kv.substr(0, kv.find('='));
        if (key != kEnvRank && key != kEnvWorld && key != kEnvLocalRank && key != kEnvNcclId &&
            key != "NCCL_NVLS_ENABLE")
            base.push_back(kv);
    }
    std::vector<std::vector<std::string>> env_text(plan.local_ranks, base);
    std::vector<std::vector<char*>> envs(plan.local_ranks);
    for (int i = 0; i < plan.local_ranks; ++i) {
        env_text[i].push_back(format("%s=%d", kEnvRank, plan.first_rank + i));
        env_text[i].push_back(format("%s=%d", kEnvWorld, plan.world));
        env_text[i].push_back(format("%s=%d", kEnvLocalRank, i));
        env_text[i].push_back(format("%s=%s", kEnvNcclId, id_hex.c_str()));
        env_text[i].push_back("NCCL_NVLS_ENABLE=0");
        for (std::string& kv : env_text[i]) envs[i].push_back(kv.data());
        envs[i].push_back(nullptr);
    }
    const std::string exec_failed = "pgolf: error: cannot execute " + plan.exe + "\n";

    // Signals stay blocked from fork to exec: the launcher's own handlers (a test runner's, say)
    // must not run in a child that is not yet the rank, and the child must die of the SIGTERM it
    // may get in that window. Blocked, it stays pending until the child has reset it to default.
    const pid_t parent = getpid();
    sigset_t all, old, none;
    sigfillset(&all);
    sigemptyset(&none);
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    std::vector<pid_t> pids(plan.local_ranks, -1);
    auto stop_all = [&](int sig) {
        for (pid_t p : pids)
            if (p > 0) kill(p, sig);
    };
    pthread_sigmask(SIG_BLOCK, &all, &old);
    for (int i = 0; i < plan.local_ranks; ++i) {
        const pid_t pid = fork();
        if (pid == 0) {
            sigaction(SIGTERM, &dfl, nullptr);
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (getppid() != parent) _exit(126);  // the launcher died before prctl took effect
            sigprocmask(SIG_SETMASK, &none, nullptr);
            execve(plan.exe.c_str(), args.data(), envs[i].data());
            (void)!write(2, exec_failed.data(), exec_failed.size());
            _exit(127);
        }
        if (pid < 0) {
            const int e = errno;
            pthread_sigmask(SIG_SETMASK, &old, nullptr);
            stop_all(SIGKILL);
            for (pid_t p : pids)
                if (p > 0) waitpid(p, nullptr, 0);
            fail("cannot start rank %d: fork: %s", plan.first_rank + i, std::strerror(e));
        }
        pids[i] = pid;
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);

    // Poll every rank: a blocking wait on one would not see another one fail.
    int alive = plan.local_ranks, failed = -1, failed_status = 0;
    std::chrono::steady_clock::time_point stopped_at;
    bool killed = false;
    while (alive > 0) {
        bool reaped = false;
        for (int i = 0; i < plan.local_ranks; ++i) {
            if (pids[i] <= 0) continue;
            int status = 0;
            const pid_t w = waitpid(pids[i], &status, WNOHANG);
            if (w == 0 || (w < 0 && errno == EINTR)) continue;
            pids[i] = -1;
            --alive;
            reaped = true;
            const bool ok = w > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
            if (!ok && failed < 0) {
                failed = i;
                failed_status = status;
                stopped_at = std::chrono::steady_clock::now();
                stop_all(SIGTERM);
            }
        }
        if (failed >= 0 && !killed && seconds_since(stopped_at) > 10) {
            stop_all(SIGKILL);
            killed = true;
        }
        if (!reaped) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (failed >= 0)
        fail("rank %d %s; stopped the other ranks", plan.first_rank + failed, describe_status(failed_status).c_str());
}

bool launch_ranks(int argc, char** argv, int gpus, const DistOptions& opt, RankInfo& me) {
    if (rank_from_env(me)) return false;
    if (opt.nodes < 1) fail("--nodes must be >= 1 (got %d)", opt.nodes);
    if (opt.node_rank < 0 || opt.node_rank >= opt.nodes)
        fail("--node-rank %d: must be in [0, %d) for --nodes %d", opt.node_rank, opt.nodes, opt.nodes);
    if (opt.nodes > 1 && opt.rendezvous.empty()) fail("--nodes %d needs --rendezvous file:PATH or tcp:HOST:PORT", opt.nodes);
    if (gpus < 0) fail("--gpus must be >= 0 (got %d)", gpus);
    int visible = 0;
    if (cudaGetDeviceCount(&visible) != cudaSuccess) {
        (void)cudaGetLastError();
        visible = 0;
    }
    if (gpus > visible) fail("--gpus %d: only %d CUDA GPU(s) visible", gpus, visible);
    const int local = gpus > 0 ? gpus : std::max(visible, 1);
    me = RankInfo{};
    if (local * opt.nodes == 1) return false;

    disable_nvls();
    LaunchPlan plan;
    plan.exe = "/proc/self/exe";
    plan.argv.assign(argv, argv + argc);
    plan.first_rank = opt.node_rank * local;
    plan.local_ranks = local;
    plan.world = opt.nodes * local;
    if (opt.node_rank == 0) {
        PG_CHECK(ncclGetUniqueId(&plan.id));
        if (opt.nodes > 1) publish_id(opt.rendezvous, plan.id, opt.nodes - 1, opt.nccl_timeout_s);
    } else {
        plan.id = fetch_id(opt.rendezvous, opt.nccl_timeout_s);
    }
    run_ranks(plan);
    return true;
}

bool join_ranks(int gpus, const DistOptions& opt, Ranks& out) {
    out = Ranks{};
    if (opt.launch) {
        const std::vector<std::string> cmd = own_command_line();
        std::vector<char*> argv;
        for (const std::string& a : cmd) argv.push_back(const_cast<char*>(a.c_str()));
        if (launch_ranks(int(argv.size()), argv.data(), gpus, opt, out.me)) return false;
    } else {
        rank_from_env(out.me);
    }
    if (out.me.world > 1) {
        PG_CHECK(cudaSetDevice(out.me.local_rank));
        out.comm = std::make_unique<Comm>(out.me.id, out.me.rank, out.me.world, out.me.local_rank, opt.nccl_timeout_s);
    }
    return true;
}

}  // namespace pg
