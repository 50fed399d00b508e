#include "pipeline/stage.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "common/check.h"
#include "common/io.h"

namespace pg {

std::string run_self(const std::vector<std::string>& args, const std::string& log_path) {
    const std::string exe = std::filesystem::read_symlink("/proc/self/exe").string();
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(exe.c_str()));
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) fail("%s: cannot write (%s)", log_path.c_str(), std::strerror(errno));
    std::fflush(stdout);
    std::fflush(stderr);
    const pid_t parent = getpid();
    const pid_t pid = fork();
    if (pid < 0) fail("fork failed (%s)", std::strerror(errno));
    if (pid == 0) {
        // Killed with the pipeline; the check after prctl covers a parent that died first.
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(137);
        dup2(fd, 1);
        dup2(fd, 2);
        execv(exe.c_str(), argv.data());
        dprintf(2, "pgolf: error: cannot run %s (%s)\n", exe.c_str(), std::strerror(errno));
        _exit(127);
    }
    ::close(fd);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) fail("waitpid failed (%s)", std::strerror(errno));
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return "";
    const std::string log = read_text(log_path);
    const size_t e = log.rfind("pgolf: error: ");
    if (e != std::string::npos && (e == 0 || log[e - 1] == '\n'))
        return log.substr(e + 14, log.find('\n', e) - e - 14);
    if (WIFSIGNALED(status)) return format("killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    return format("exit status %d", WEXITSTATUS(status));
}

std::string shell_command(const std::string& program, const std::vector<std::string>& args) {
    std::string s = program;
    for (const std::string& a : args) {
        bool plain = !a.empty();
        for (char ch : a)
            if (!std::isalnum((unsigned char)ch) && !std::strchr("-_=.,/:+@%", ch)) plain = false;
        if (plain) {
            s += " " + a;
        } else {
            std::string q = "'";
            for (char ch : a) q += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
            s += " " + q + "'";
        }
    }
    return s;
}

}  // namespace pg
