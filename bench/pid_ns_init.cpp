// Runs a command in a new PID and mount namespace, under an init that reaps every process of
// the namespace as soon as it exits, with the namespace's own /proc.
//
// Why: libvirtd daemonizes each emulator, so an emulator that exits is a zombie of PID 1
// until PID 1 reaps it, and `virsh destroy` waits until the pid is gone. A Debian host's
// systemd reaps at once; the PID 1 of the machines this benchmark runs on reaps only every
// ~2 s, which would be charged to libvirt. libvirtd also reads /proc/PID of its emulators,
// hence the namespace's own /proc.
//
// SIGTERM and SIGINT go to COMMAND. When COMMAND exits, so does the init, and the kernel kills
// whatever else is left in the namespace (virtlogd, emulators); this program then exits with
// COMMAND's status. If the process that started this one dies, the namespace is killed too.
//
// Usage (root): pid_ns_init COMMAND [ARGS...]
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>

namespace {

volatile sig_atomic_t g_forward_to = 0;

void forward(int sig) {
  if (g_forward_to > 0) ::kill(g_forward_to, sig);
}

void forward_signals() {
  struct sigaction sa {};
  sa.sa_handler = forward;
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);
}

int exit_code(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

// PID 1 of the new namespace: mount its /proc, start the command, reap everything.
[[noreturn]] void run_init(char** command) {
  if (::prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) < 0 ||
      ::mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) < 0) {
    std::perror("pid_ns_init: namespace setup");
    std::_Exit(127);
  }
  pid_t main_pid = ::fork();
  if (main_pid < 0) std::_Exit(127);
  if (main_pid == 0) {
    ::execvp(command[0], command);
    std::perror(command[0]);
    std::_Exit(127);
  }
  g_forward_to = main_pid;
  forward_signals();
  for (;;) {
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, 0);
    if (pid == main_pid) std::_Exit(exit_code(status));
    if (pid < 0 && errno != EINTR) std::_Exit(127);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: pid_ns_init COMMAND [ARGS...]\n");
    return 2;
  }
  if (::prctl(PR_SET_PDEATHSIG, SIGTERM) < 0 || ::unshare(CLONE_NEWPID | CLONE_NEWNS) < 0) {
    std::perror("pid_ns_init: unshare");
    return 127;
  }
  pid_t init = ::fork();
  if (init < 0) return 127;
  if (init == 0) run_init(argv + 1);
  g_forward_to = init;
  forward_signals();
  int status = 0;
  while (::waitpid(init, &status, 0) < 0)
    if (errno != EINTR) return 127;
  return exit_code(status);
}
